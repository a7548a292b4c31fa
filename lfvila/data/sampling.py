"""One shard sample -> a plan for one training sample (no pixels decoded yet).

The shard sample is the contract of the shard stage: ``json`` (key, fps, width, height,
``frame_times``, ``sentences`` with ``[frame_start, frame_end)``) and ``NNNN.jpg`` frames, or, for
``shards.frames: h264``, one ``h264`` stream whose layout the JSON gives (``codec``, ``keyframes``,
``packet_bytes``): the plan then keeps only the packets from the keyframe before each frame it
uses up to that frame (lfvila/video/h264.py). Planning
validates it, draws every random choice (sentence window, crop box, flip) from a generator the
caller seeds, and keeps only the JPEG bytes of the frames that will be decoded, so plans are small
enough to sit in a shuffle buffer.

A sample the reader read by offsets (a local shard in the shard stage's layout) comes with its JSON
already parsed (``__meta__``) and its frames as ``__frames__``, read and checked only for the
frames a plan keeps: a frame whose header is not what the JSON's ``frame_bytes`` promised skips the
sample as ``bad_frame_member`` (a corrupt shard; read member by member, the same corruption ends
the shard in ``truncated_tar``).
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

import numpy as np

from lfvila.data.config import DataConfig
from lfvila.data.reader import FrameMemberError
from lfvila.data.transforms import CropBox, random_resized_crop_box, val_crop_box
from lfvila.video.h264 import CODEC as H264_CODEC
from lfvila.video.h264 import MEMBER as H264_MEMBER
from lfvila.video.h264 import frames_to_decode

# Frame times are seconds rounded by the writer; a frame this close to a span edge counts as inside.
TIME_TOLERANCE_S = 1e-3


class SkipSample(Exception):
    """A sample that cannot be used; ``reason`` is a short counter name."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class SamplePlan:
    key: str
    url: str
    texts: list[str]  # the window's sentences or the merged paragraph, 1..M (padded at collation)
    frame_ids: list[int]  # T indices into ``jpegs``, in clip order (clip i owns frames i*K:(i+1)*K)
    jpegs: list[bytes]  # the distinct frames to decode, in time order
    frame_hw: tuple[int, int]  # stored frame size from the JSON
    box: CropBox
    flip: bool
    mlm_seed: tuple[int, ...]  # seeds the stage-2 masking of this sample
    # An H.264 sample (shards.frames: h264): what to decode instead of ``jpegs`` (then empty).
    h264: H264Frames | None = None


@dataclass
class H264Frames:
    """The packets of an H.264 sample that give its plan's distinct frames (lfvila/video/h264.py):
    ``packets[i]`` is stream frame ``packet_frames[i]``, in decode order (runs from a keyframe);
    ``wanted`` are the distinct frames in time order (``frame_ids`` index into it)."""

    packets: list[bytes]
    packet_frames: list[int]
    wanted: list[int]


_NUMBER_TYPES = {int, float}  # exact types: json gives no subclasses, and bool is excluded


def _all_numbers(values: list) -> bool:
    """Every value is a finite int/float (not bool). One type pass, then one finiteness check of
    the sum (a nan or inf anywhere makes it non-finite; so do absurdly large times): calling
    _number() on each of a sample's ~200 frame times cost ~1 ms per sample."""
    if not set(map(type, values)) <= _NUMBER_TYPES:
        return False
    try:
        return math.isfinite(sum(values))
    except OverflowError:  # ints beyond float range
        return False


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_meta(raw: dict, max_frame_side: int = DataConfig.max_frame_side) -> dict:
    """Decode and type-check ``KEY.json``; raise SkipSample("bad_json"/"missing_json").

    ``width`` and ``height`` must be ints (not bools) in ``1..max_frame_side``: the batch buffer
    is sized from them (and from JPEG headers checked against them, see collate)."""
    if "json" not in raw:
        raise SkipSample("missing_json", "no KEY.json member")
    try:  # the reader already parsed the JSON of a sample it read by offsets
        meta = raw["__meta__"] if "__meta__" in raw else json.loads(raw["json"])
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError; RecursionError: deep nesting
        raise SkipSample("bad_json", str(exc)[:200]) from None
    if not isinstance(meta, dict):
        raise SkipSample("bad_json", "top level is not an object")
    times, sentences = meta.get("frame_times"), meta.get("sentences")
    if not isinstance(times, list) or not _all_numbers(times):
        raise SkipSample("bad_json", "frame_times is not a list of numbers")
    if not isinstance(sentences, list) or not all(isinstance(s, dict) for s in sentences):
        raise SkipSample("bad_json", "sentences is not a list of objects")
    for name in ("width", "height"):
        if type(meta.get(name)) is not int or not 1 <= meta[name] <= max_frame_side:  # exact type: no bools
            raise SkipSample("bad_json", f"{name} is not an integer in 1..{max_frame_side} "
                                         f"(data.max_frame_side): {meta.get(name)!r}"[:200])
    for s in sentences:
        if not isinstance(s.get("text"), str):
            raise SkipSample("bad_json", "a sentence has no text")
        if not all(isinstance(s.get(k), int) and not isinstance(s.get(k), bool) for k in ("frame_start", "frame_end")):
            raise SkipSample("bad_json", "a sentence has no integer frame_start/frame_end")
        if not (_number(s.get("start")) and _number(s.get("end"))):
            raise SkipSample("bad_json", "a sentence has no numeric start/end")
    return meta


@functools.lru_cache(maxsize=256)
def _standard_frame_names(n_frames: int) -> tuple[tuple[str, ...], frozenset]:
    names = tuple(f"{i:04d}.jpg" for i in range(n_frames))
    return names, frozenset(names)


def frame_members(raw: dict, n_frames: int) -> tuple[str, ...] | list[str]:
    """The member names of frames 0..n_frames-1, in order; raise SkipSample when the jpg members
    are not exactly frames 0..n_frames-1.

    Fast path for the shard stage's layout (``__key__``, ``__url__``, ``json`` and ``NNNN.jpg``
    frames, nothing else): one set comparison instead of parsing ~200 member names (~0.3 ms)."""
    names, name_set = _standard_frame_names(n_frames)
    if len(raw) == n_frames + 3 and raw.keys() >= name_set:
        return names
    found = {}
    for name in raw:
        if name.endswith(".jpg") and name[:-4].isdecimal():  # isdigit() also takes "²", which int() rejects
            found[int(name[:-4])] = name
    if sorted(found) != list(range(n_frames)):
        raise SkipSample("frame_count_mismatch", f"{len(found)} jpg members, {n_frames} frame_times")
    return [found[i] for i in range(n_frames)]


def copy_frames(frames, indices: list[int]) -> list[bytes]:
    """Copies of frames ``indices`` of a sample the reader read by offsets (its ``__frames__``,
    whose headers are checked only now); raise SkipSample("bad_frame_member") when one of them is
    not the member its ``frame_bytes`` promised (a corrupt or lying shard)."""
    try:
        return [bytes(data) for data in frames.take(indices)]
    except FrameMemberError as exc:
        raise SkipSample("bad_frame_member", str(exc)[:200]) from None


def check_frame_ranges(meta: dict) -> None:
    """Each sentence's ``[frame_start, frame_end)`` must lie in the frames and in its time span."""
    times = meta["frame_times"]
    if times != sorted(times):
        raise SkipSample("bad_frame_range", "frame_times are not in time order")
    if not meta["sentences"]:
        raise SkipSample("no_sentences")
    for i, s in enumerate(meta["sentences"]):
        fs, fe = s["frame_start"], s["frame_end"]
        if not 0 <= fs <= fe <= len(times):
            raise SkipSample("bad_frame_range", f"sentence {i}: [{fs}, {fe}) outside {len(times)} frames")
        # times are sorted: the span's first and last frame bound all of them
        lo, hi = s["start"] - TIME_TOLERANCE_S, s["end"] + TIME_TOLERANCE_S
        if fe > fs and not (lo <= times[fs] and times[fe - 1] <= hi):
            raise SkipSample("bad_frame_range", f"sentence {i}: frames outside its span [{s['start']}, {s['end']}]")


def uniform_frame_indices(frame_start: int, frame_end: int, k: int) -> list[int]:
    """``k`` frames uniformly over ``[frame_start, frame_end)``, endpoint excluded; repeats when fewer.

    ``floor(linspace(0, n, k, endpoint=False))`` as LF-VILA computes it (the same float products
    ``j * (n / k)``, so the same rounding), in plain Python: numpy's call overhead was 10x the work.
    """
    step = (frame_end - frame_start) / k
    return [frame_start + math.floor(j * step) for j in range(k)]


def whole_video_frame_indices(n_frames: int, t: int, rng: np.random.Generator | None) -> list[int]:
    """``t`` frame indices spread over all ``n_frames`` stored frames, as the release's retrieval
    datasets read a video: ``linspace(start, end, t)`` truncated to integers, with ``interval =
    n_frames // (t - 1)``, ``start`` drawn in ``[0, interval]`` and ``end`` in ``[n_frames - 1 -
    interval, n_frames - 1]`` when ``rng`` is given (training); ``start = 0``, ``end = n_frames - 1``
    without (evaluation). Fewer frames than ``t`` repeat frames."""
    if n_frames < 1 or t < 1:
        raise ValueError(f"need at least one frame and one index, got n_frames={n_frames}, t={t}")
    start, end = 0, n_frames - 1
    if rng is not None:
        interval = n_frames // (t - 1) if t > 1 else n_frames - 1
        start = int(rng.integers(0, interval + 1))
        # max(): with t = 2 the release's lower bound would be -1 (an index from the end)
        end = int(rng.integers(max(0, n_frames - 1 - interval), n_frames))
    return np.linspace(start, end, t).astype(int).tolist()


def merge_paragraph(texts: list[str], max_sentences: int) -> list[str]:
    """At most ``max_sentences`` texts: while there are more, the adjacent pair with the smallest
    total length in characters (the first such pair) is joined with a space, as the release does."""
    if max_sentences < 1:
        raise ValueError(f"max_sentences must be >= 1, got {max_sentences}")
    texts = list(texts)
    while len(texts) > max_sentences:
        pair_lengths = [len(a) + len(b) for a, b in zip(texts, texts[1:])]
        i = pair_lengths.index(min(pair_lengths))
        texts[i:i + 2] = [f"{texts[i]} {texts[i + 1]}"]
    return texts


def _window(sentences: list[dict], cfg: DataConfig, rng: np.random.Generator) -> tuple[list[str], list[int]]:
    """Pre-training: a random window of ``n_sentences`` consecutive sentences, ``frames_per_sentence``
    frames uniformly inside each; (texts, frame indices in clip order)."""
    m, k = cfg.n_sentences, cfg.frames_per_sentence
    # The release drew the first sentence in [0, n - m): never the last window (window_excludes_last).
    last = len(sentences) - m if cfg.window_excludes_last else len(sentences) - m + 1
    first = int(rng.integers(0, last)) if len(sentences) > m else 0
    window = sentences[first:first + m]
    short = [s for s in window if s["frame_end"] - s["frame_start"] < cfg.min_frames_per_sentence]
    if short:
        raise SkipSample("too_few_frames", f"{len(short)} sentence(s) with fewer than "
                                           f"{cfg.min_frames_per_sentence} frames")
    per_clip = [uniform_frame_indices(s["frame_start"], s["frame_end"], k) for s in window]
    # Padded clip slots (fewer than M sentences) repeat the last real clip's frames; their
    # sentences are masked out through sentence_mask.
    per_clip += [per_clip[-1]] * (m - len(window))
    return [s["text"] for s in window], [i for clip in per_clip for i in clip]


def _whole_video(meta: dict, cfg: DataConfig, rng: np.random.Generator, train: bool) -> tuple[list[str], list[int]]:
    """Retrieval: the whole paragraph (merged to ``paragraph_sentences``) and ``n_frames`` frames over
    the whole video, consecutive groups of ``frames_per_sentence`` forming the clips."""
    n = len(meta["frame_times"])
    if n == 0:
        raise SkipSample("too_few_frames", "the sample has no stored frames")
    texts = merge_paragraph([s["text"] for s in meta["sentences"]], cfg.paragraph_sentences)
    return texts, whole_video_frame_indices(n, cfg.n_frames, rng if train else None)


def _h264_layout(raw: dict, meta: dict) -> tuple[memoryview | bytes, list[int], list[int]]:
    """(stream, packet byte offsets (n + 1), keyframes) of an H.264 sample; SkipSample when the
    JSON's layout does not describe its ``h264`` member."""
    stream = raw.get(H264_MEMBER)
    if stream is None:
        raise SkipSample("missing_video", f"codec {H264_CODEC} but no .{H264_MEMBER} member")
    sizes, keyframes, n = meta.get("packet_bytes"), meta.get("keyframes"), len(meta["frame_times"])
    if not (isinstance(sizes, list) and len(sizes) == n and set(map(type, sizes)) <= {int} and min(sizes, default=1) > 0):
        raise SkipSample("bad_json", "packet_bytes is not one positive integer per frame")
    if not (isinstance(keyframes, list) and set(map(type, keyframes)) <= {int} and keyframes[:1] == [0] * bool(n)
            and keyframes == sorted(set(keyframes)) and keyframes[-1:] < [n]):
        raise SkipSample("bad_json", "keyframes is not a sorted list of frame indices starting at 0")
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    if offsets[-1] != len(stream):
        raise SkipSample("bad_json", f"packet_bytes add up to {offsets[-1]}, the stream has {len(stream)} bytes")
    return stream, offsets, keyframes


def plan_sample(raw: dict, cfg: DataConfig, rng: np.random.Generator, train: bool,
                mlm_seed: tuple[int, ...]) -> SamplePlan:
    """Validate a shard sample and draw its window (``data.sampling``), frames, crop and flip (in that order)."""
    meta = parse_meta(raw, cfg.max_frame_side)
    check_frame_ranges(meta)
    frames = raw.get("__frames__")  # a sample read by offsets: its frames are checked when taken
    codec = meta.get("codec")
    if codec is not None and codec != H264_CODEC:
        raise SkipSample("bad_json", f"unknown codec {codec!r}"[:200])
    if codec is not None:
        stream, offsets, keyframes = _h264_layout(raw, meta)
    elif frames is None:
        names = frame_members(raw, len(meta["frame_times"]))
    elif len(frames) != len(meta["frame_times"]):
        raise SkipSample("frame_count_mismatch", f"{len(frames)} frames, {len(meta['frame_times'])} frame_times")
    if cfg.sampling == "whole_video":
        texts, wanted = _whole_video(meta, cfg, rng, train)
    else:
        texts, wanted = _window(meta["sentences"], cfg, rng)
    # The same draws, in the same order, whatever the storage: the frames are the JPEG path's.
    distinct = sorted(set(wanted))
    slot = {frame: j for j, frame in enumerate(distinct)}
    frame_hw = (meta["height"], meta["width"])
    if train:
        box = random_resized_crop_box(rng, frame_hw, cfg.crop, cfg.scale, cfg.ratio, cfg.ratio_relative_to_output)
        flip = bool(cfg.hflip and rng.random() < 0.5)
    else:
        box, flip = val_crop_box(cfg.val_resize, cfg.val_crop_fraction), False
    h264 = None
    if codec is not None:
        # Only the packets from the keyframe before each wanted frame up to it (copies: the plan
        # sits in the shuffle buffer and must not pin the stream).
        decode = frames_to_decode(distinct, keyframes, len(meta["frame_times"]))
        h264 = H264Frames([bytes(stream[offsets[f]:offsets[f + 1]]) for f in decode], decode, distinct)
        jpegs = []
    elif frames is not None:
        jpegs = copy_frames(frames, distinct)
    else:
        # Copies: members read member by member are views into the reader's chunks,
        # which a plan must not pin (frames read by offsets already are bytes of their own).
        jpegs = [bytes(raw[names[i]]) for i in distinct]
    return SamplePlan(
        key=raw.get("__key__", meta.get("key", "")), url=raw.get("__url__", ""),
        texts=texts, frame_ids=[slot[i] for i in wanted], jpegs=jpegs,
        frame_hw=frame_hw, box=box, flip=flip, mlm_seed=mlm_seed, h264=h264,
    )
