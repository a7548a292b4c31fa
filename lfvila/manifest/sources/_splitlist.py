"""``?split_list=FILE``: keep only the videos a published split lists (one video id per line).

The paragraph-retrieval benchmarks are evaluated on fixed video lists, e.g. the collaborative-experts
lists (``train_list.txt``, ``val_1_list.txt``, ``test_list.txt``, github.com/albanie/collaborative-experts
``misc/datasets``). A source given a list yields its listed videos as usual; every annotation of a
video the list does not name is one ``not_in_split`` reject (stage ``parse``), so the accounting still
covers every input record. The split a kept video goes to is the build's (``manifest.force_split``),
as for any source. Listed ids that match no video are counted (``split_list_unmatched``), not rejected:
they are references, not input records.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from lfvila.errors import InputError
from lfvila.manifest.records import NOT_IN_SPLIT, RawVideo, Reject
from lfvila.manifest.sources._io import iter_lines, require_regular_file

OPTION = "split_list"


def same_id(video_id: str) -> str:
    return video_id


def read_split_list(path: Path, key: Callable[[str], str] = same_id) -> set[str]:
    """The ids of a split list (blank lines and surrounding whitespace ignored), each through ``key``."""
    require_regular_file(path, f"{OPTION} {path}")
    ids = set()
    for number, text in iter_lines(path, None):
        if text is None:
            raise InputError(f"{OPTION} {path}: line {number} is over the line cap; is it a list of video ids?")
        if text.strip():
            ids.add(key(text.strip()))
    if not ids:
        raise InputError(f"{OPTION} {path} lists no video id")
    return ids


def split_list_files(options: dict) -> list[Path]:
    """The list file, for the source's input checksums (so a rebuild with another list is another input)."""
    return [Path(options[OPTION])] if options.get(OPTION) else []


def keep_listed(source: str, items: Iterable[RawVideo | Reject], options: dict, stats: dict,
                key: Callable[[str], str] = same_id) -> Iterator[RawVideo | Reject]:
    """``items`` with each video the split list leaves out turned into one ``not_in_split`` reject per
    annotation; unchanged without the option. ``key`` maps a video id and a listed id to the form they
    are compared in. ``stats`` gets ``split_list_ids`` and ``split_list_unmatched``."""
    if not options.get(OPTION):
        yield from items
        return
    path = Path(options[OPTION])
    listed = read_split_list(path, key)
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, RawVideo):
            yield item
            continue
        k = key(item.video_id)
        if k in listed:
            seen.add(k)
            yield item
            continue
        detail = f"video {item.video_id!r} is not in {OPTION} {path.name}"
        for clip in item.clips:
            yield Reject(source, item.video_id, clip.clip_id, "parse", NOT_IN_SPLIT, detail, item.video_id,
                         item.file, clip.line)
    stats["split_list_ids"] = len(listed)
    stats["split_list_unmatched"] = len(listed - seen)
