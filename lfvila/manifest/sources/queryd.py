"""queryd: QuerYD's transcribed audio descriptions and their times.

QuerYD (Oncescu et al. 2021; github.com/oncescuandreea/QuerYD_downloader) publishes, from
www.robots.ox.ac.uk/~vgg/research/collaborative-experts/data/QuerYD/:

- ``raw_captions_combined_filtered.pkl`` (also ``-v1`` / ``-v2``): ``{video name: [caption, ...]}``
  with each caption a list of word tokens (``" ".join`` gives the text) and video names
  ``video-<YouTube id>``, the names the collaborative-experts split lists (``train_list.txt``,
  ``val_list.txt``, ``test_list.txt``, also ``exists_*_list.txt``) and the QuerYD downloader's files
  (``videos/video-<id>.<ext>``) use;
- ``times_captions_combined_filtered.pkl``: ``{video name: [[start, end], ...]}`` in seconds, "in the
  same order" as the captions.

PATH is the captions file; ``?times=FILE`` names the times file, by default the captions file's
sibling with ``raw_captions`` replaced by ``times_captions`` in its name. Both may also be JSON
files of the same structure (some projects convert them). Caption ``i`` of a video is clip
``<video>.<i>`` with span ``times[i]``; a caption given as one string is taken as is. The
descriptions in time order are the video's paragraph.

Assumptions (not established from the public material, which shows the structure through the code
that reads it, not a specification): a span is ``[start, end]`` seconds as numbers (numpy scalars
are converted); a video whose captions and spans differ in number cannot be paired and each of its
captions is a ``malformed_record`` reject; spans of zero length (start == end, which readers of the
file handle specially) are ``end_not_after_start`` rejects as for any source.

Pickles are read with an unpickler that only builds containers, strings and numbers (and numpy
scalars and arrays): a pickle naming anything else is refused (InputError), so reading an
annotation file never runs code from it.

``?split_list=FILE`` keeps the listed videos (exact names); see ``_splitlist``.
"""
from __future__ import annotations

import io
import json
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

from lfvila.errors import InputError
from lfvila.manifest.records import MALFORMED_RECORD, RawClip, RawVideo, Reject
from lfvila.manifest.sources._splitlist import OPTION as SPLIT_LIST
from lfvila.manifest.sources._splitlist import keep_listed, split_list_files

IS_ASR = False
OPTIONS = ("times", SPLIT_LIST)
SOURCE = "queryd"

# What a QuerYD pickle may construct besides builtin containers, strings and numbers.
_ALLOWED_GLOBALS = {
    ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"), ("builtins", "set"), ("builtins", "str"),
    ("builtins", "int"), ("builtins", "float"), ("collections", "OrderedDict"),
    ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
}


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to build {module}.{name}: a QuerYD file holds only data")
        return super().find_class(module, name)


def times_path(path: Path, options: dict) -> Path:
    if options.get("times"):
        return Path(options["times"])
    if "raw_captions" not in path.name:
        raise InputError(f"{SOURCE} source {path}: give the times file with ?times=FILE (no 'raw_captions' in the "
                         "name to derive times_captions... from)")
    return path.with_name(path.name.replace("raw_captions", "times_captions", 1))


def input_files(path: Path, options: dict) -> list[Path]:
    return [path, times_path(path, options)] + split_list_files(options)


def _plain(value: object) -> object:
    """numpy scalars and arrays as Python numbers and lists (everything else unchanged)."""
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":
        return value.tolist()
    return value


def load_mapping(path: Path, progress: Callable[[int], None] | None) -> dict:
    """A QuerYD ``{video: [...]}`` file, pickle or JSON; InputError when it is neither or not a mapping."""
    data = path.read_bytes()
    if progress is not None:
        progress(len(data))
    try:
        if path.suffix.lower() == ".json":
            value = json.loads(data.decode("utf-8", "surrogateescape"))
        else:
            value = _DataOnlyUnpickler(io.BytesIO(data), encoding="utf-8", errors="surrogateescape").load()
    except Exception as e:  # noqa: BLE001 -- whatever a damaged pickle raises, the file cannot be read
        raise InputError(f"{SOURCE} source: {path} is not a readable QuerYD file: {e}") from None
    if not isinstance(value, dict):
        raise InputError(f"{SOURCE} source: {path} holds a {type(value).__name__}, not {{video: [...]}}")
    return value


def _caption_text(caption: object) -> object:
    caption = _plain(caption)
    if isinstance(caption, (list, tuple)) and all(isinstance(w, str) for w in caption):
        return " ".join(caption)
    return caption  # a string as is; anything else fails validation as a text that is not a string


def _span(span: object) -> tuple[object, object]:
    span = _plain(span)
    if isinstance(span, (list, tuple)) and len(span) == 2:
        return _plain(span[0]), _plain(span[1])
    return span, None


def _read(path: Path, options: dict, progress: Callable[[int], None] | None, stats: dict) -> Iterator[RawVideo | Reject]:
    file = str(path)
    captions = load_mapping(path, progress)
    times_file = times_path(path, options)
    times = load_mapping(times_file, progress)
    for video_id, caps in captions.items():
        caps = _plain(caps)
        spans = _plain(times.get(video_id))
        if not isinstance(caps, list):
            yield Reject(SOURCE, str(video_id), None, "parse", MALFORMED_RECORD,
                         f"captions of {video_id!r} are not a list", repr(caps)[:500], file, 0)
            continue
        problem = None
        if spans is None:
            problem = f"no times for the video in {times_file.name}"
        elif not isinstance(spans, list) or len(spans) != len(caps):
            n = len(spans) if isinstance(spans, list) else type(spans).__name__
            problem = f"{len(caps)} captions but {n} time spans in {times_file.name}: they cannot be paired"
        if problem is not None:
            for i, cap in enumerate(caps):
                yield Reject(SOURCE, str(video_id), f"{video_id}.{i}", "parse", MALFORMED_RECORD, problem,
                             repr(_caption_text(cap))[:500], file, 0)
            continue
        clips = [RawClip(f"{video_id}.{i}", i, *_span(span), _caption_text(cap), 0)
                 for i, (cap, span) in enumerate(zip(caps, spans))]
        yield RawVideo(video_id, None, clips, file)
    stats["times_videos_without_captions"] = len(set(times) - set(captions))


def read(path: Path, options: dict, progress: Callable[[int], None] | None, stats: dict) -> Iterator[RawVideo | Reject]:
    return keep_listed(SOURCE, _read(path, options, progress, stats), options, stats)
