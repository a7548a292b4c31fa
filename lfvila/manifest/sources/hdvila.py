"""hdvila: HD-VILA-100M metadata, one JSON object per line and per video.

``{"video_id": V, "clip": [{"clip_id": "V.<n>.mp4", "span": ["HH:MM:SS.mmm", ...], "text": ...}]}``.
The sentence may sit on each clip entry (``text``) or in a separate file given as
``hdvila:META?text=TEXTS`` mapping clip_id to text: JSON lines ``{"clip_id", "text"}`` or TSV
``clip_id<TAB>text``. The text file is indexed in a temporary SQLite database (on disk, so memory
stays bounded for 100M clips) and joined per video; a clip's own ``text`` wins over the file.

The public release has spans but no text: ``hdvila:META?subtitles=DIR`` takes each clip's text from
the video's caption track ``DIR/<video_id>.<lang>.vtt`` (yt-dlp's naming; the first of the
``lang`` option's comma-separated languages that exists, default ``en,en-US,en-GB``, then
``DIR/<video_id>.vtt``). The track is parsed, de-duplicated and word-timed exactly as the
``subtitles`` source does (``subtitles.parse_track``, ``asr.dedupe_words``: per-word timing tags
where present, else interpolation by character position), and each word goes to the one clip
whose span holds its start time (see ``assign_words``). A clip's own text or ``?text`` wins; a clip
of a video without a caption file is a ``no_subtitles`` reject, one whose span holds no word an
``empty_text`` reject (at validation). One video's track is in memory at a time.
"""
from __future__ import annotations

import bisect
import json
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import orjson

from lfvila.manifest.asr import dedupe_words
from lfvila.manifest.config import AsrConfig, ManifestConfig
from lfvila.manifest.jsonstream import TooDeep, loads_line
from lfvila.manifest.records import (
    DUPLICATE_CLIP, INVALID_UTF8, MALFORMED_RECORD, MAX_CLIP_NUMBER, MAX_LINE_BYTES, NO_SUBTITLES,
    TOO_DEEP, TOO_LARGE, RawClip, RawVideo, Reject, has_invalid_utf8, hdvila_clip_number, parse_time, shown_utf8,
    unsafe_id_reason,
)
from lfvila.manifest.sources._io import files_with_suffixes, iter_lines, raw_lines
from lfvila.manifest.sources.subtitles import parse_track
from lfvila.manifest.validate import validate_video

IS_ASR = False
OPTIONS = ("text", "subtitles", "lang")
DEFAULT_LANGS = ("en", "en-US", "en-GB")
SOURCE = "hdvila"
_BATCH = 50_000
_new_tuple = tuple.__new__  # builds a RawClip without its Python-level __new__ (hot loop)


def input_files(path: Path, options: dict) -> list[Path]:
    files = [path] + ([Path(options["text"])] if options.get("text") else [])
    if options.get("subtitles"):
        files += files_with_suffixes(Path(options["subtitles"]), (".vtt",))
    return files


def _reject(video_id, clip_id, stage, reason, detail, value, file, line) -> Reject:
    return Reject(SOURCE, video_id, clip_id, stage, reason, detail, None if value is None else str(value)[:500], file, line)


def _too_long(line_no: int, file: str, stage: str = "parse", what: str = "line") -> Reject:
    return _reject(None, None, stage, TOO_LARGE, f"{what} {line_no}: over the cap of {MAX_LINE_BYTES} bytes (not read)",
                   None, file, line_no)


def read(path: Path, options: dict, progress: Callable[[int], None] | None, stats: dict) -> Iterator[RawVideo | Reject]:
    """Yield one RawVideo per metadata line; malformed lines and clip entries become Rejects."""
    if options.get("subtitles"):
        yield from _with_subtitle_text(_read(path, options, progress, stats), options, progress, stats)
    else:
        yield from _read(path, options, progress, stats)


def _read(path: Path, options: dict, progress, stats: dict) -> Iterator[RawVideo | Reject]:
    file = str(path)
    if options.get("text"):
        with tempfile.TemporaryDirectory(prefix="lfvila-hdvila-text-") as tmp:
            conn = sqlite3.connect(Path(tmp) / "texts.sqlite")
            try:
                yield from _load_texts(conn, Path(options["text"]), progress, stats)
                yield from _read_metadata(path, file, progress, conn, stats)
            finally:
                conn.close()
    else:
        yield from _read_metadata(path, file, progress, None, stats)


def _read_metadata(path: Path, file: str, progress, conn, stats: dict) -> Iterator[RawVideo | Reject]:
    used = [0]  # clip texts taken from the text file
    for line_no, line in iter_lines(path, progress):
        yield from items_of_line(line_no, line, file, conn, used)
    if conn is not None:
        stats["text_rows_used"] = used[0]
        stats["text_rows_unused"] = stats.get("text_rows", 0) - used[0]


def items_of_line(line_no: int, line: str, file: str, conn=None, used: list | None = None,
                  obj: object = None) -> Iterator[RawVideo | Reject]:
    """The RawVideo and parse Rejects of one metadata line (``obj``: the line already decoded)."""
    if obj is None:
        if line is None:
            yield _too_long(line_no, file)
            return
        if not line.strip():
            return
        try:
            obj = loads_line(line)
        except TooDeep as e:
            yield _reject(None, None, "parse", TOO_DEEP, f"line {line_no}: {e}", line.strip(), file, line_no)
            return
        except ValueError as e:  # also an integer over Python's 4300-digit limit
            yield _reject(None, None, "parse", MALFORMED_RECORD, f"line {line_no}: invalid JSON ({str(e)[:200]})",
                          line.strip(), file, line_no)
            return
    if not (isinstance(obj, dict) and isinstance(obj.get("video_id"), str) and isinstance(obj.get("clip"), list)):
        yield _reject(None, None, "parse", MALFORMED_RECORD,
                      f"line {line_no}: expected an object with video_id (string) and clip (list)", line.strip(), file, line_no)
        return
    video_id = obj["video_id"]
    texts = _lookup(conn, video_id) if conn is not None else None
    clips = []
    for entry in obj["clip"]:
        try:
            clip_id, (start, end) = entry["clip_id"], entry["span"]
            if type(clip_id) is not str:
                raise TypeError
        except (TypeError, KeyError, ValueError):
            yield _reject(video_id, None, "parse", MALFORMED_RECORD,
                          f"line {line_no}: clip entry needs clip_id (string) and span [start, end]",
                          json.dumps(entry)[:500], file, line_no)
            continue
        middle = hdvila_clip_number(video_id, clip_id)
        if middle is None:
            yield _reject(video_id, clip_id, "parse", MALFORMED_RECORD,
                          f"line {line_no}: clip_id is not <video_id>.<n>.mp4", clip_id, file, line_no)
            continue
        if len(middle) > 9 and (len(middle) > 10 or int(middle) > MAX_CLIP_NUMBER):  # int() never sees huge digit runs
            yield _reject(video_id, clip_id, "parse", MALFORMED_RECORD,
                          f"line {line_no}: clip number of {clip_id[:80]!r} is over {MAX_CLIP_NUMBER} (clip_index is int32)",
                          clip_id, file, line_no)
            continue
        text = entry.get("text")
        if text is None and texts:
            text = texts.get(clip_id)
            used[0] += text is not None
        clips.append(_new_tuple(RawClip, (clip_id, int(middle), start, end, text, line_no, None)))
    yield RawVideo(video_id, obj.get("duration"), clips, file)


class LineBatch(NamedTuple):
    """Consecutive metadata lines of the plain shape, as columns (the columnar fast path's input).

    Plain: a JSON object with a string ``video_id``, no ``duration``, and a non-empty ``clip`` list
    whose entries all have a string ``clip_id``, a ``span`` list of two strings and a string ``text``.
    Whether each video is also *clean* (every clip would be kept) is decided by
    ``lfvila.manifest.fastpath.check_batch``; the others are re-read with ``items_of_line``.
    """

    line_nos: list[int]
    objs: list[dict]
    video_ids: list[str]
    clip_counts: list[int]
    clip_ids: list[str]  # all clips of the batch, video after video
    starts: list[str]
    ends: list[str]
    texts: list[str]


_STR_ONLY = {str}
_THREE = {3}  # clip entries of exactly clip_id, span and text
_SCALARS = (str, int, float, bool, type(None))


def read_batches(path: Path, options: dict, progress: Callable[[int], None] | None, stats: dict,
                 batch_clips: int = 1 << 15) -> Iterator[RawVideo | Reject | LineBatch]:
    """Like ``read`` but plain lines come as ``LineBatch``es of about ``batch_clips`` clips, in line order.

    Lines are decoded with orjson from bytes; a line that orjson refuses (invalid UTF-8, NaN, ...) or
    that is not plain is yielded as ``read`` would (RawVideo / Rejects) after the lines before it.
    With a separate text file or caption tracks every line goes through ``read``.
    """
    if options.get("text") or options.get("subtitles"):
        yield from read(path, options, progress, stats)
        return
    file = str(path)
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    batch = LineBatch([], [], [], [], [], [], [], [])
    n_clips = 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(raw_lines(f, progress), 1):
            plain = False
            try:
                obj = None if raw is None else loads(raw)
            except decode_error:
                obj = None
            else:
                try:
                    clips, video_id = obj["clip"], obj["video_id"]
                    # Shallow by construction (orjson alone would take 1,024 levels): besides the known
                    # fields only scalars, at the top and in every clip entry; anything else goes to
                    # items_of_line, which applies MAX_JSON_DEPTH.
                    if (type(video_id) is str and type(clips) is list and clips and obj.get("duration") is None
                            and all(type(v) in _SCALARS for k, v in obj.items() if k != "clip")
                            and (set(map(len, clips)) == _THREE or all(
                                type(v) in _SCALARS for e in clips for k, v in e.items() if k != "span"))):
                        clip_ids = [e["clip_id"] for e in clips]
                        spans = [e["span"] for e in clips]
                        texts = [e["text"] for e in clips]
                        if set(map(type, spans)) == {list} and set(map(len, spans)) == {2}:
                            starts = [s[0] for s in spans]
                            ends = [s[1] for s in spans]
                            plain = (set(map(type, clip_ids)) == _STR_ONLY and set(map(type, texts)) == _STR_ONLY
                                     and set(map(type, starts)) == _STR_ONLY and set(map(type, ends)) == _STR_ONLY)
                except (TypeError, KeyError, AttributeError):
                    plain = False
            if not plain:
                if n_clips:
                    yield batch
                    batch = LineBatch([], [], [], [], [], [], [], [])
                    n_clips = 0
                # Re-decoded with the json module, exactly as ``read`` does (orjson differs on
                # NaN, huge numbers, lone surrogates): the fast path only changes speed.
                yield from items_of_line(line_no, None if raw is None else raw.decode("utf-8", "surrogateescape"), file)
                continue
            batch.line_nos.append(line_no)
            batch.objs.append(obj)
            batch.video_ids.append(video_id)
            batch.clip_counts.append(len(clips))
            batch.clip_ids.extend(clip_ids)
            batch.starts.extend(starts)
            batch.ends.extend(ends)
            batch.texts.extend(texts)
            n_clips += len(clips)
            if n_clips >= batch_clips:
                yield batch
                batch = LineBatch([], [], [], [], [], [], [], [])
                n_clips = 0
    if n_clips:
        yield batch


def caption_track(folder: Path, video_id: str, langs: tuple[str, ...]) -> Path | None:
    """The video's caption file: ``<video_id>.<lang>.vtt`` for the first language that exists, else ``<video_id>.vtt``."""
    for name in [f"{video_id}.{lang}.vtt" for lang in langs] + [f"{video_id}.vtt"]:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def assign_words(starts: list[float], spans: list[tuple[float, float] | None]) -> list[list[int]]:
    """Word indices per clip: a word goes to the latest-starting clip with ``start <= t <= end``.

    ``starts`` are the words' start times (non-decreasing); ``spans`` the clips' (start, end) in
    seconds, None where the span does not parse (that clip gets no words). Each word lands in at
    most one clip, so no word is ever duplicated; where clips overlap the later one wins, and a
    word exactly on a shared boundary goes to the clip that starts there.
    """
    order = sorted((s[0], k) for k, s in enumerate(spans) if s is not None)
    clip_starts = [t for t, _ in order]
    words: list[list[int]] = [[] for _ in spans]
    for i, t in enumerate(starts):
        j = bisect.bisect_right(clip_starts, t) - 1
        if j >= 0:
            k = order[j][1]
            if t <= spans[k][1]:
                words[k].append(i)
    return words


def _span_seconds(clip: RawClip) -> tuple[float, float] | None:
    try:
        return parse_time(clip.start), parse_time(clip.end)
    except ValueError:
        return None  # validation rejects the clip as bad_timestamp


_CUE_CHECKS = ManifestConfig()  # caption cues are validated with the defaults (ids, times, text)


def _with_subtitle_text(items: Iterator[RawVideo | Reject], options: dict, progress, stats: dict) -> Iterator[RawVideo | Reject]:
    """Fill the text of clips that have none from the video's caption track (module doc)."""
    folder = Path(options["subtitles"])
    langs = tuple(x.strip() for x in options.get("lang", "").split(",") if x.strip()) or DEFAULT_LANGS
    asr_cfg = AsrConfig()
    for key in ("subtitle_tracks", "subtitle_cues", "subtitle_cues_rejected", "subtitle_words", "subtitle_words_in_clips"):
        stats.setdefault(key, 0)
    for item in items:
        if (isinstance(item, Reject) or all(c.text is not None for c in item.clips) or has_invalid_utf8(item.video_id)
                or unsafe_id_reason(item.video_id, _CUE_CHECKS.max_id_length) is not None):
            yield item  # an unsafe video id never becomes a path: validation rejects it as unsafe_id
            continue
        track = caption_track(folder, item.video_id, langs)
        if track is None:
            kept = []
            for c in item.clips:
                if c.text is None:
                    yield _reject(item.video_id, c.clip_id, "text", NO_SUBTITLES,
                                  f"no caption file for video {item.video_id!r} in {folder} (languages {', '.join(langs)})",
                                  None, item.file, c.line)
                else:
                    kept.append(c)
            yield item._replace(clips=kept)
            continue
        problems: list = []  # lines of the track that are not cues: counted with its rejected cues
        cues = parse_track(track, item.video_id, progress, problems)
        fragments = validate_video(RawVideo(item.video_id, None, cues, str(track)), "subtitles", _CUE_CHECKS, set())
        timed = dedupe_words(fragments, asr_cfg)
        missing = [k for k, c in enumerate(item.clips) if c.text is None]
        per_clip = assign_words(timed.starts, [_span_seconds(item.clips[k]) for k in missing])
        clips = list(item.clips)
        for k, indices in zip(missing, per_clip):
            clips[k] = clips[k]._replace(text=" ".join(timed.words[i] for i in indices))
        stats["subtitle_tracks"] += 1
        stats["subtitle_cues"] += len(cues)
        stats["subtitle_cues_rejected"] += len(fragments.rejects) + len(problems)
        stats["subtitle_words"] += len(timed.words)
        stats["subtitle_words_in_clips"] += sum(map(len, per_clip))
        yield item._replace(clips=clips)


def _lookup(conn: sqlite3.Connection, video_id: str) -> dict:
    texts: dict = {}
    if has_invalid_utf8(video_id):  # sqlite cannot take it, and no stored row has one (_load_texts rejects them)
        return texts
    for clip_id, text in conn.execute("SELECT clip_id, text FROM t WHERE video_id = ? ORDER BY rowid", (video_id,)):
        texts.setdefault(clip_id, text)
    return texts


def _parse_text_line(line: str) -> tuple[str, str]:
    """(clip_id, text) of one JSON-lines or TSV line; ValueError when malformed."""
    if line.lstrip().startswith("{"):
        obj = loads_line(line)
        if not isinstance(obj, dict) or not isinstance(obj.get("clip_id"), str) or not isinstance(obj.get("text"), str):
            raise ValueError("expected {\"clip_id\": str, \"text\": str}")
        return obj["clip_id"], obj["text"]
    clip_id, tab, text = line.rstrip("\r\n").partition("\t")
    if not tab:
        raise ValueError("expected clip_id<TAB>text")
    return clip_id, text


def _load_texts(conn: sqlite3.Connection, path: Path, progress, stats: dict) -> Iterator[Reject]:
    """Index the text file by video id; malformed, invalid and duplicate lines become Rejects."""
    file = str(path)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("CREATE TABLE t (video_id TEXT, clip_id TEXT, text TEXT, line INTEGER)")
    batch: list[tuple] = []
    rows = 0
    for line_no, line in iter_lines(path, progress):
        if line is None:
            yield _too_long(line_no, file, "text", "text file line")
            continue
        if not line.strip() or (line_no == 1 and line.rstrip("\r\n") == "clip_id\ttext"):
            continue
        try:
            clip_id, text = _parse_text_line(line)
        except ValueError as e:
            yield _reject(None, None, "text", MALFORMED_RECORD, f"text file line {line_no}: {e}", line.strip(), file, line_no)
            continue
        if has_invalid_utf8(clip_id) or has_invalid_utf8(text):
            yield _reject(None, None, "text", INVALID_UTF8, f"text file line {line_no}: bytes that are not UTF-8",
                          shown_utf8(line.strip()), file, line_no)
            continue
        parts = clip_id.rsplit(".", 2)
        if len(parts) != 3 or parts[2] != "mp4" or not parts[1].isdigit():
            yield _reject(None, clip_id, "text", MALFORMED_RECORD, f"text file line {line_no}: clip_id is not <video_id>.<n>.mp4",
                          clip_id, file, line_no)
            continue
        batch.append((parts[0], clip_id, text, line_no))
        if len(batch) >= _BATCH:
            conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", batch)
            rows += len(batch)
            batch.clear()
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", batch)
    rows += len(batch)
    conn.execute("CREATE INDEX t_video ON t (video_id)")
    conn.execute("CREATE INDEX t_clip ON t (clip_id)")
    duplicates = conn.execute(
        "SELECT video_id, clip_id, line FROM t WHERE rowid NOT IN (SELECT MIN(rowid) FROM t GROUP BY clip_id) ORDER BY rowid")
    for video_id, clip_id, line_no in duplicates:
        rows -= 1
        yield _reject(video_id, clip_id, "text", DUPLICATE_CLIP, f"text file line {line_no}: clip_id already has a text",
                      clip_id, file, line_no)
    stats["text_rows"] = rows
