"""One long-form video (a manifest row) -> one WebDataset sample written into a shard.

Members, in this order: ``KEY.json`` then ``KEY.0000.jpg``, ``KEY.0001.jpg``, ... (time order). The
JSON comes first and lists each frame member's byte length (``frame_bytes``), so a reader that has
the JSON can compute where every frame member lies and read only the frames it uses
(``lfvila.shards.tar.frame_header_offsets``; written by ``DeterministicTarWriter.add_sample``).
The JSON needs every frame's size, so a sample's JPEGs are held in memory until it is accepted (a
few MB: 200-400 frames of ~15-25 kB at 240p) and then written in one go; a rejected sample never
touches the tar.

Frames: slot ``n`` of the long-form video's grid shows the source frame on screen at
``start + (n + 0.5) / fps`` (see lfvila/video/decode.py). Only slots whose time falls inside at
least one sentence span are stored: gaps between sentences carry no text. Sentence ``i`` owns the
stored frames ``[frame_start, frame_end)``: exactly those whose time lies in ``[start, end)``.

Policies (each recorded per sample in the shard's status table, docs/shards.md):
- span past the end of the file: the frames that exist are kept, sentences are clipped to the
  decoded end, and sentences left without frames are dropped (their clips counted as rejected);
- decode errors part-way: ffmpeg conceals what it can and goes on; its error lines are counted
  (``decode_errors``) and a sample with more than ``video.max_decode_errors`` (default 0) is
  rejected as ``decode_error``; within the limit, if ffmpeg gives up part-way, what was decoded
  before is kept as for a short file;
- a sample is rejected when fewer sentences keep frames than the manifest's rule asks of a
  long-form video (``min(manifest.min_clips, its clip count)``): it is no longer long-form.
"""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from pathlib import Path

from lfvila.shards.tar import DeterministicTarWriter
from lfvila.video.decode import (
    MAX_ASPECT_RATIO,
    SegmentDecoder,
    SegmentResult,
    slot_at_or_after,
    slot_time,
    width_range,
)
from lfvila.video.h264 import CODEC as H264_CODEC
from lfvila.video.h264 import MEMBER as H264_MEMBER
from lfvila.video.h264 import H264Encoder
from lfvila.video.source import VideoSource, find_source

# Sample reasons whose cause may be outside the data (missing download, overloaded machine): the
# sample is "failed" rather than "rejected", and --retry-failed redoes its shard.
RETRYABLE_REASONS = {"video_not_found", "span_not_downloaded", "video_io_error", "decode_timeout", "internal_error"}


@dataclass
class SampleOutcome:
    """One row of a shard's status table."""

    key: str
    status: str  # written | rejected | failed
    reason: str = ""  # empty when written
    detail: str = ""
    n_frames: int = 0
    n_sentences: int = 0
    n_clips: int = 0  # clips of the manifest row
    clips_written: int = 0
    clip_rejects: dict[str, int] = field(default_factory=dict)  # clips dropped from a written sample
    duration: float = 0.0
    offset: int = -1  # byte offset of the sample's first member in the tar
    size: int = 0  # bytes of all its members, headers and padding included
    decode_errors: int = 0
    trimmed: bool = False


@dataclass
class _Segment:
    """One decoder run: a file and the grid slots it provides."""

    path: Path | None
    file_offset: float  # source time minus file time (0 for a full video, the clip start for a clip)
    first_slot: int
    count: int
    result: SegmentResult | None = None
    missing_reason: str = ""


def _wanted_slots(sentences: list[dict], grid_start: float, fps: float) -> list[int]:
    wanted: set[int] = set()
    for s in sentences:
        wanted.update(range(slot_at_or_after(s["start"], grid_start, fps), slot_at_or_after(s["end"], grid_start, fps)))
    return sorted(wanted)


def _plan_segments(row: dict, source: VideoSource, wanted: list[int], fps: float) -> tuple[list[_Segment], list[int]]:
    """Segments to decode and, per sentence, the index of the segment that serves it."""
    sentences = row["sentences"]
    if source.full is not None:
        seg = _Segment(source.full, source.offset, wanted[0], wanted[-1] - wanted[0] + 1) if wanted else None
        return ([seg] if seg else []), [0] * len(sentences)
    segments: list[_Segment] = []
    owner: list[int] = []
    covered = -1
    grid_start = row["start"]
    for s in sentences:
        lo = max(slot_at_or_after(s["start"], grid_start, fps), covered + 1)
        hi = slot_at_or_after(s["end"], grid_start, fps)
        path = source.clips.get(s["clip_id"])
        seg = _Segment(path, s["start"], lo, max(0, hi - lo),
                       missing_reason="" if path is not None else "clip_file_not_found")
        owner.append(len(segments))
        segments.append(seg)
        covered = max(covered, hi - 1)
    return segments, owner


def _sample_meta(row: dict, fps: float, width: int, height: int, times: list[float], sentences: list[dict],
                 decode_errors: int) -> dict:
    """The sample's KEY.json (``frame_bytes`` is added by ``DeterministicTarWriter.add_sample``)."""
    return {
        "key": row["key"], "source": row["source"], "video_id": row["video_id"],
        "start": round(min(s["start"] for s in sentences), 6), "end": round(max(s["end"] for s in sentences), 6),
        "fps": fps, "width": width, "height": height,
        "frame_times": [round(t, 6) for t in times],
        "sentences": sentences,
        "decode_errors": decode_errors,
    }


def _add_h264_sample(tar: DeterministicTarWriter, key: str, meta: dict, encoder: H264Encoder) -> tuple[int, int]:
    """``KEY.json`` with the stream's layout right after ``frame_times``, then ``KEY.h264``."""
    stream, packet_bytes, keyframes = encoder.finish()
    if len(packet_bytes) != len(meta["frame_times"]):
        raise RuntimeError(f"{key}: {len(packet_bytes)} H.264 packets for {len(meta['frame_times'])} frames")
    ordered = {}
    for name, value in meta.items():
        ordered[name] = value
        if name == "frame_times":
            ordered.update({"codec": H264_CODEC, "keyframes": keyframes, "packet_bytes": packet_bytes})
    return tar.add_stream_sample(key, ordered, H264_MEMBER, stream)


def write_sample(row: dict, videos_dir: Path, cfg, tar: DeterministicTarWriter) -> SampleOutcome:
    """Decode ``row``'s long-form video and append its sample to ``tar``; the tar is unchanged when it is not written.

    The frames are JPEG-encoded into memory as they are decoded and written, after ``KEY.json``, only once
    the sample is accepted; if writing raises part-way, the caller rolls the tar back to ``tar.tell()`` as it
    was before the call.
    """
    vcfg = cfg.video
    fps = vcfg.fps
    key = row["key"]
    sentences = list(row["sentences"])
    outcome = SampleOutcome(key=key, status="rejected", n_clips=len(sentences))
    grid_start = row["start"]
    wanted = _wanted_slots(sentences, grid_start, fps)
    try:
        found = find_source(videos_dir, row["video_id"], [s["clip_id"] for s in sentences])
    except OSError as exc:
        # Reading this sample's own input (its files, its sections.json) failed: a fact about this
        # sample, retryable once fixed. Any other OSError fails the whole shard task (task.py).
        outcome.status, outcome.reason = "failed", "video_io_error"
        outcome.detail = f"{row['video_id']} under {videos_dir}: {exc}"[:500]
        return outcome
    if found is None:
        outcome.status, outcome.reason = "failed", "video_not_found"
        outcome.detail = f"no {row['video_id']}.<ext> or {row['video_id']}/<clip_id> under {videos_dir}"
        return outcome
    span_start, span_end = row["start"], row["end"]
    source = found.for_span(span_start, span_end)
    if source is None:
        outcome.status, outcome.reason = "failed", "span_not_downloaded"
        outcome.detail = (f"{span_start:.3f}-{span_end:.3f}s not inside one section of "
                          f"{row['video_id']}/sections.json: " + ", ".join(
                              f"{s.path.name} {s.offset:.3f}-{s.end:.3f}s" for s in found.sections))[:500]
        return outcome
    segments, owner = _plan_segments(row, source, wanted, fps)
    wanted_set = set(wanted)
    digits = max(4, len(str(max(len(wanted) - 1, 0))))
    deadline = time.monotonic() + vcfg.timeout_s + vcfg.timeout_per_video_s * (row["end"] - row["start"])

    times: list[float] = []
    jpegs: list[bytes] = []  # frame i's JPEG; held until the sample is accepted (its JSON lists their sizes)
    h264 = cfg.shards.frames == "h264"
    encoder = None  # shards.frames: h264: the sample's frames go into one H.264 stream instead
    width = height = None
    decoded_until: list[float] = []  # per segment: source time up to which frames exist
    for seg in segments:
        if seg.path is None or seg.count == 0:
            decoded_until.append(float("inf"))
            continue
        file_start = grid_start + seg.first_slot / fps - seg.file_offset
        decoder = SegmentDecoder(seg.path, file_start, seg.count, fps, vcfg.frame_height, width,
                                 vcfg.decoder_threads, deadline)
        frames = iter(decoder)
        for i, frame in frames:
            if width is None:  # the sample's first frame sets its width (its display aspect ratio)
                height, width = frame.y.shape
                lo, hi = width_range(height)
                if not lo <= width <= hi:
                    frames.close()  # stops ffmpeg
                    outcome.reason = "aspect_ratio_out_of_range"
                    shape = f"more than {hi}x{height}" if width > hi else f"{width}x{height}"
                    outcome.detail = (f"{seg.path.name}: its display aspect ratio gives frames of {shape}; "
                                      f"at most {MAX_ASPECT_RATIO:g}:1 either way ({lo} to {hi} pixels wide)")
                    return outcome
                if h264:
                    encoder = H264Encoder(width, height, fps, vcfg.h264_crf, vcfg.h264_gop, vcfg.h264_preset,
                                          vcfg.h264_tune)
            slot = seg.first_slot + i
            if slot not in wanted_set:
                continue
            if encoder is not None:
                encoder.add(frame)
            else:
                jpegs.append(frame.to_jpeg(vcfg.jpeg_quality))
            times.append(slot_time(slot, grid_start, fps))
        seg.result = res = decoder.result
        if res.frames:
            # Errors of a file that gave no frame are its reject reason instead (clip or sample level).
            outcome.decode_errors += len(res.error_lines)
        if res.timed_out:
            outcome.status, outcome.reason = "failed", "decode_timeout"
            outcome.detail = f"{seg.path.name}: no result within the deadline"
            return outcome
        truncated = res.frames < seg.count
        decoded_until.append(grid_start + (seg.first_slot + res.frames) / fps if truncated else float("inf"))
        outcome.trimmed |= truncated and res.frames > 0

    if outcome.decode_errors > vcfg.max_decode_errors:
        outcome.reason = "decode_error"
        outcome.detail = "; ".join(line for seg in segments if seg.result for line in seg.result.error_lines[:2])[:500]
        outcome.trimmed = False
        return outcome

    kept: list[dict] = []
    for s, seg_index in zip(sentences, owner):
        seg = segments[seg_index] if segments else None
        end = min(s["end"], decoded_until[seg_index]) if seg else s["end"]
        lo = bisect.bisect_left(times, s["start"])
        hi = bisect.bisect_left(times, end)
        if hi > lo:
            kept.append({"text": s["text"], "start": round(s["start"], 6), "end": round(end, 6),
                         "clip_id": s["clip_id"], "frame_start": lo, "frame_end": hi})
            continue
        if seg is None:
            reason = "no_frames_in_span"
        elif seg.missing_reason:
            reason = seg.missing_reason
        elif seg.result is not None and seg.result.frames == 0:
            reason = seg.result.reason()
        elif end < s["end"]:
            reason = "past_end_of_video"
        else:
            reason = "no_frames_in_span"
        outcome.clip_rejects[reason] = outcome.clip_rejects.get(reason, 0) + 1

    needed = min(cfg.manifest.min_clips, len(sentences))
    if len(kept) < max(needed, 1):
        outcome.clip_rejects = {}
        first = next((g for g in segments if g.result is not None or g.missing_reason), None)
        if not times and first is not None:
            outcome.reason = first.missing_reason or first.result.reason()
            outcome.detail = "" if first.missing_reason else first.result.detail()
        else:
            outcome.reason = "too_little_left"
            outcome.detail = f"{len(kept)} of {len(sentences)} sentences have frames; {needed} needed"
        return outcome

    meta = _sample_meta(row, fps, width, height, times, kept, outcome.decode_errors)
    if encoder is not None:
        outcome.offset, outcome.size = _add_h264_sample(tar, key, meta, encoder)
    else:
        outcome.offset, outcome.size = tar.add_sample(key, meta, jpegs, digits)
    outcome.status = "written"
    outcome.n_frames = len(times)
    outcome.n_sentences = outcome.clips_written = len(kept)
    outcome.duration = round(max(s["end"] for s in kept) - min(s["start"] for s in kept), 6)
    if outcome.decode_errors:
        outcome.detail = "; ".join(line for seg in segments if seg.result for line in seg.result.error_lines[:1])[:500]
    return outcome
