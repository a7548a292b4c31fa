"""A training sample's frames, decoded: JPEG (simplejpeg, optionally downscaled in the DCT) or
H.264 (only the packets the sample uses), rendered into its region of the batch buffer.

``resize_on: loader``: decoded, cropped, resized and flipped here (:func:`render_video`);
``resize_on: device``: decoded only, the crop box left to ``batch_to_device`` (:func:`render_frames`).
Failures are :class:`SkipSample` with a reason (``corrupt_jpeg``, ``frame_size_mismatch``,
``corrupt_video``), counted by the loader.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import simplejpeg
import torch

from lfvila.data.buffers import BatchCanvas
from lfvila.data.config import DataConfig
from lfvila.data.sampling import SamplePlan, SkipSample
from lfvila.data.transforms import box_to_pixels, dct_scale, resize_crop_frames, resize_crop_into
from lfvila.video.h264 import decode_selected


def _dct_sizing(frame_hw: tuple[int, int], factor: int) -> dict:
    # Pin the decoded size to exactly 1/factor: simplejpeg picks the smallest scale meeting both
    # the minimum factor and the minimum size.
    if factor == 1:
        return {}
    return {"min_factor": factor, "min_height": math.ceil(frame_hw[0] / factor),
            "min_width": math.ceil(frame_hw[1] / factor)}


def _decoded_hw(jpeg: bytes, frame_hw: tuple[int, int], factor: int) -> tuple[int, int]:
    """The decoded size of a sample's frame at DCT downscale ``factor``, from its JPEG header,
    which must give the JSON's ``frame_hw``: buffers are sized from the result, so a header
    claiming 65500x65500 is a skipped sample, not a 6 TB allocation (the JSON's size is bounded
    by ``data.max_frame_side``)."""
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(jpeg)
        if (height, width) != tuple(frame_hw):
            raise SkipSample("frame_size_mismatch", f"frame 0: the JPEG header says {height}x{width}, "
                                                    f"the JSON {frame_hw[0]}x{frame_hw[1]}")
        if factor != 1:
            height, width, _, _ = simplejpeg.decode_jpeg_header(jpeg, **_dct_sizing(frame_hw, factor))
    except (ValueError, TypeError, OSError) as exc:
        raise SkipSample("corrupt_jpeg", f"frame 0: {exc}") from None
    return height, width


def _decode_into(data: bytes, index: int, out: np.ndarray, hw: tuple[int, int], sizing: dict, fast: bool) -> None:
    """Decode one JPEG into ``out`` (a contiguous array of at least ``hw`` x 3 bytes)."""
    try:
        decoded = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=fast, fastupsample=fast,
                                         buffer=out, **sizing)
    except (ValueError, TypeError, OSError) as exc:
        # simplejpeg also raises ValueError when a (larger) frame does not fit the buffer.
        reason = "frame_size_mismatch" if "buffer" in str(exc).lower() else "corrupt_jpeg"
        raise SkipSample(reason, f"frame {index}: {exc}") from None
    if decoded.shape != (*hw, 3):
        raise SkipSample("frame_size_mismatch", f"frame {index}: {decoded.shape[:2]} != {hw}")


def decode_frames(jpegs: list[bytes], frame_hw: tuple[int, int], factor: int = 1, fast: bool = False) -> torch.Tensor:
    """Decode JPEGs to uint8 ``(N, H, W, 3)``, downscaled by ``factor`` in the DCT (see dct_scale).

    Raises SkipSample("corrupt_jpeg") for undecodable data and ("frame_size_mismatch") when a
    frame's size is not ``frame_hw`` (checked on the first frame's header before allocating).
    """
    sizing = _dct_sizing(frame_hw, factor)
    hw = _decoded_hw(jpegs[0], frame_hw, factor)
    # Decode straight into one (N, h, w, 3) array: no per-frame arrays to stack afterwards.
    frames = np.empty((len(jpegs), *hw, 3), dtype=np.uint8)
    for i, data in enumerate(jpegs):
        _decode_into(data, i, frames[i], hw, sizing, fast)
    return torch.from_numpy(frames)


def decode_h264_frames(plan: SamplePlan) -> Iterator[tuple[int, np.ndarray]]:
    """(index into the plan's distinct frames, RGB uint8 ``(H, W, 3)``) of an H.264 plan, in time
    order; raises SkipSample("corrupt_video") when its packets do not decode as the JSON says."""
    h264 = plan.h264
    slot = {frame: j for j, frame in enumerate(h264.wanted)}
    try:
        for frame, rgb in decode_selected(h264.packets, h264.packet_frames, slot.keys(), plan.frame_hw):
            yield slot[frame], rgb
    except ValueError as exc:
        raise SkipSample("corrupt_video", str(exc)[:200]) from None


def decoded_geometry(plan: SamplePlan, cfg: DataConfig) -> tuple[int, tuple[int, int]]:
    """(DCT downscale factor, decoded frame size) of ``plan``'s frames, from the first JPEG's header.
    H.264 frames decode at their stored size (factor 1; the decoder checks it against the JSON)."""
    if plan.h264 is not None:
        return 1, plan.frame_hw
    factor = dct_scale(plan.frame_hw, plan.box, cfg.crop)
    return factor, _decoded_hw(plan.jpegs[0], plan.frame_hw, factor)


def render_frames(plan: SamplePlan, cfg: DataConfig, out: np.ndarray, factor: int,
                  hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """``resize_on: device``: the sample's T frames decoded, uncropped, straight into ``out``
    uint8 ``(T, h, w, 3)`` (its own region of the batch buffer, sized ``hw``); returns the crop
    box (top, left, height, width) in pixels of the decoded frames. Repeated frames are copies."""
    if plan.h264 is not None:
        first_slot = {}
        for t, source in enumerate(plan.frame_ids):
            first_slot.setdefault(source, t)
        for source, rgb in decode_h264_frames(plan):
            np.copyto(out[first_slot[source]], rgb)
        for t, source in enumerate(plan.frame_ids):
            if first_slot[source] != t:
                np.copyto(out[t], out[first_slot[source]])
        return box_to_pixels(plan.box, hw)
    sizing = _dct_sizing(plan.frame_hw, factor)
    first_slot: dict[int, int] = {}  # jpeg index -> the slot it was decoded into
    for t, source in enumerate(plan.frame_ids):
        if source in first_slot:
            np.copyto(out[t], out[first_slot[source]])
            continue
        _decode_into(plan.jpegs[source], source, out[t], hw, sizing, cfg.jpeg_fast)
        first_slot[source] = t
    return box_to_pixels(plan.box, hw)


def render_video(plan: SamplePlan, cfg: DataConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    """The sample's clip frames as uint8 ``(T, H, W, 3)``: decoded, cropped, resized, flipped.

    Written into ``out`` (a ``(T, H, W, 3)`` slot of the batch buffer) when given, so each frame
    is written once, by its resize (repeats, where clips are short, are copies).
    """
    if plan.h264 is not None:
        frames = torch.from_numpy(np.empty((len(plan.h264.wanted), *plan.frame_hw, 3), dtype=np.uint8))
        for source, rgb in decode_h264_frames(plan):
            frames[source] = torch.from_numpy(rgb)  # (N, h, w, 3)
    else:
        factor = dct_scale(plan.frame_hw, plan.box, cfg.crop)
        frames = decode_frames(plan.jpegs, plan.frame_hw, factor, cfg.jpeg_fast)  # (N, h, w, 3)
    if out is None:
        out = torch.empty((len(plan.frame_ids), *cfg.crop, 3), dtype=torch.uint8)
    if cfg.antialias:
        distinct = resize_crop_frames(frames, plan.box, cfg.crop, plan.flip, antialias=True)  # (N, 3, H, W)
        return torch.index_select(distinct.permute(0, 2, 3, 1), 0, torch.as_tensor(plan.frame_ids), out=out)
    resize_crop_into(frames.numpy(), plan.frame_ids, plan.box, plan.flip, out.numpy())
    return out


def render_geometry(plan: SamplePlan, cfg: DataConfig) -> tuple[int, tuple[int, int]]:
    """(DCT downscale factor, H x W the sample takes in the batch buffer): the crop with
    ``resize_on: loader``, the decoded frame size with ``resize_on: device``. Reads one JPEG header
    (raises SkipSample("corrupt_jpeg") when it is unreadable)."""
    if cfg.resize_on == "loader":
        return 1, cfg.crop  # render_video picks its own factor
    return decoded_geometry(plan, cfg)


def render_sample(plan: SamplePlan, cfg: DataConfig, canvas: BatchCanvas, index: int,
                  geometry: tuple[int, tuple[int, int]]) -> tuple[int, int, int, int] | None:
    """Render ``plan`` into row ``index`` of the batch: cropped/resized/flipped (``resize_on:
    loader``, returns None) or decoded only (``resize_on: device``, returns its pixel crop box).
    ``geometry`` is :func:`render_geometry`'s."""
    factor, hw = geometry
    if cfg.resize_on == "loader":
        render_video(plan, cfg, out=canvas.row(index, hw))
        return None
    return render_frames(plan, cfg, canvas.row(index, hw).numpy(), factor, hw)
