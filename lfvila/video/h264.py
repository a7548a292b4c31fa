"""A sample's frames as one H.264 stream (``shards.frames: h264``): encoding in the shard stage,
decoding only the frames a training sample uses in the loader.

The stream is raw H.264 (Annex B byte stream, as ``ffmpeg -f h264`` writes it), one packet per
frame in time order: no B-frames, so decode order is presentation order and the n-th packet is
the sample's frame n (``frame_times[n]`` in its JSON). A keyframe (IDR, with the sequence and
picture parameter sets in front of it) every ``video.h264_gop`` frames: decoding from any
keyframe needs nothing before it. The JSON lists each packet's byte length (``packet_bytes``) and
the keyframes' frame indices (``keyframes``), so a reader can cut, without parsing the stream,
the packets from the keyframe before each frame it wants up to that frame
(:func:`frames_to_decode`) and decode only those (:func:`decode_selected`).

Frames are full-range BT.601 YUV 4:2:0 (``yuvj420p``), the planes the shard stage also gives the
JPEG encoder, so the two storage modes hold the same pixels up to their codecs' losses. libx264 runs
in-process through PyAV with one thread (a build runs one process per core; one thread also makes
the bytes deterministic).
"""
from __future__ import annotations

import bisect
from collections.abc import Iterator
from fractions import Fraction

import numpy as np

CODEC = "h264"
MEMBER = "h264"  # the tar member's extension: KEY.h264
PIX_FMT = "yuvj420p"  # full-range BT.601 4:2:0, as the decoded planes (lfvila.video.decode.YuvFrame)


class H264Encoder:
    """Encode one sample's frames (``YuvFrame``, all ``width`` x ``height``) into packets in memory."""

    def __init__(self, width: int, height: int, fps: float, crf: int, gop: int, preset: str, tune: str = ""):
        import av

        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, PIX_FMT
        rate = Fraction(fps).limit_denominator(1001)
        ctx.framerate, ctx.time_base = rate, 1 / rate
        ctx.thread_count = 1
        # keyint = min-keyint and no scene-cut keyframes: a keyframe exactly every ``gop`` frames,
        # so the JSON's keyframe list is the stream's. bframes=0: decode order = frame order.
        ctx.options = {"crf": str(crf), "preset": preset,
                       "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:threads=1"}
        if tune:
            ctx.options = {**ctx.options, "tune": tune}
        self.ctx, self.width, self.height = ctx, width, height
        self.packets: list[bytes] = []
        self.keyframes: list[int] = []
        self._pts = 0

    def add(self, frame) -> None:
        """Append one frame (planes y (H, W), u and v (H/2, W/2))."""
        import av

        y, u, v = frame
        # yuv420p as PyAV takes it: the three planes back to back, viewed as rows of the luma width
        planes = np.concatenate([y.ravel(), u.ravel(), v.ravel()]).reshape(-1, y.shape[1])  # (H * 3 / 2, W)
        video_frame = av.VideoFrame.from_ndarray(planes, format=PIX_FMT)
        video_frame.pts = self._pts
        self._pts += 1
        self._take(self.ctx.encode(video_frame))

    def _take(self, packets) -> None:
        for packet in packets:
            if packet.is_keyframe:
                self.keyframes.append(len(self.packets))
            self.packets.append(bytes(packet))

    def finish(self) -> tuple[bytes, list[int], list[int]]:
        """(the stream, each packet's byte length, keyframe frame indices); one packet per frame added."""
        self._take(self.ctx.encode(None))
        if len(self.packets) != self._pts:
            raise RuntimeError(f"libx264 gave {len(self.packets)} packets for {self._pts} frames")
        return b"".join(self.packets), [len(p) for p in self.packets], self.keyframes


def frames_to_decode(wanted: list[int], keyframes: list[int], n_frames: int) -> list[int]:
    """The frames to decode, in decode order, to get frames ``wanted`` (sorted, distinct).

    Per keyframe interval holding a wanted frame: from its keyframe up to the last wanted frame in
    it. The frames after that in the interval, and intervals holding no wanted frame, are never
    decoded. Each run starts at a keyframe, so the runs go through one decoder back to back.
    """
    runs: list[int] = []
    i = 0
    while i < len(wanted):
        after = bisect.bisect_right(keyframes, wanted[i])  # the first keyframe past wanted[i]
        key = keyframes[after - 1]
        next_key = keyframes[after] if after < len(keyframes) else n_frames
        while i + 1 < len(wanted) and wanted[i + 1] < next_key:
            i += 1
        runs.extend(range(key, wanted[i] + 1))
        i += 1
    return runs


def decode_selected(packets: list[bytes], packet_frames: list[int], wanted: set[int] | frozenset,
                    hw: tuple[int, int]) -> Iterator[tuple[int, np.ndarray]]:
    """Decode ``packets`` (frame ``packet_frames[i]`` each, runs that each start at a keyframe) and
    yield ``(frame index, RGB uint8 (H, W, 3))`` for the frames in ``wanted``, in order.

    Raises ValueError when the stream does not decode to one frame of ``hw`` per packet."""
    import av

    ctx = av.CodecContext.create(CODEC, "r")
    ctx.thread_count = 1  # one loader worker per core
    decoded = 0

    def emitted(frames) -> Iterator[tuple[int, np.ndarray]]:
        nonlocal decoded
        for frame in frames:
            if decoded >= len(packet_frames):
                raise ValueError(f"the stream decoded to more frames than its {len(packet_frames)} packets")
            index = packet_frames[decoded]
            decoded += 1
            if index in wanted:
                if (frame.height, frame.width) != tuple(hw):
                    raise ValueError(f"frame {index} is {frame.height}x{frame.width}, the JSON says {hw[0]}x{hw[1]}")
                yield index, frame.to_ndarray(format="rgb24")

    try:
        for data in packets:
            yield from emitted(ctx.decode(av.Packet(data)))
        yield from emitted(ctx.decode(None))
    except av.FFmpegError as exc:
        raise ValueError(str(exc)[:200]) from None
    if decoded != len(packet_frames):
        raise ValueError(f"{len(packet_frames)} packets decoded to {decoded} frames")


def decode_all(stream: bytes, packet_bytes: list[int], hw: tuple[int, int]) -> Iterator[np.ndarray]:
    """Every frame of a sample's stream as RGB uint8 ``(H, W, 3)``, in order (for viewing a sample)."""
    offsets = [0]
    for size in packet_bytes:
        offsets.append(offsets[-1] + size)
    packets = [stream[offsets[i]:offsets[i + 1]] for i in range(len(packet_bytes))]
    frames = list(range(len(packets)))
    for _, rgb in decode_selected(packets, frames, frozenset(frames), hw):
        yield rgb
