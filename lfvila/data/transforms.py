"""Frame geometry and pixels: crop boxes, resize/flip on the host or on the device, normalisation.

Crop boxes are chosen as *fractions* of the frame, (top, left, height, width) in [0, 1], from the
frame size written in the sample's JSON. They are turned into pixels only after decoding, so a
decoder that returns a DCT-downscaled image (simplejpeg's ``min_height``/``min_width``) crops the
same region. One box serves all frames of a sample (a video crop, not per-frame jitter).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CropBox = tuple[float, float, float, float]  # (top, left, height, width) as fractions of the frame


def random_resized_crop_box(
    rng: np.random.Generator,
    frame_hw: tuple[int, int],
    out_hw: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    relative: bool = True,
) -> CropBox:
    """RandomResizedCrop's box (torchvision's algorithm, 10 tries then a centre crop).

    ``ratio`` is the jitter of the crop's aspect (W/H) *relative to the output aspect*
    (``ratio=(1, 1)`` gives crops with exactly the output's aspect, so no distortion);
    ``relative=False``: the crop's absolute W/H range, as torchvision and the release.
    """
    height, width = frame_hw
    area = height * width
    out_aspect = out_hw[1] / out_hw[0] if relative else 1.0
    log_lo, log_hi = math.log(ratio[0] * out_aspect), math.log(ratio[1] * out_aspect)
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top / height, left / width, h / height, w / width
    # Fallback (as torchvision): the largest centre crop whose aspect is inside the range.
    in_aspect = width / height
    if in_aspect < math.exp(log_lo):
        w, h = width, int(round(width / math.exp(log_lo)))
    elif in_aspect > math.exp(log_hi):
        h, w = height, int(round(height * math.exp(log_hi)))
    else:
        h, w = height, width
    return centre_box(h / height, w / width)


def centre_box(height_fraction: float, width_fraction: float) -> CropBox:
    """A centred box covering the given fraction of each side."""
    return (1 - height_fraction) / 2, (1 - width_fraction) / 2, height_fraction, width_fraction


def val_crop_box(resize_hw: tuple[int, int], crop_fraction: float) -> CropBox:
    """LF-VILA's validation geometry (resize to ``resize_hw``, centre crop ``crop_fraction``).

    Resizing does not move content, so the final region is this box of the original frame; the
    loader resamples it to the output size in one step instead of two (one interpolation, not two).
    Integer rounding follows the two-step pipeline on a ``resize_hw`` image.
    """
    rh, rw = resize_hw
    ch, cw = int(round(rh * crop_fraction)), int(round(rw * crop_fraction))
    top, left = int(round((rh - ch) / 2)), int(round((rw - cw) / 2))
    return top / rh, left / rw, ch / rh, cw / rw


def box_to_pixels(box: CropBox, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Fractions -> integer (top, left, height, width) inside an ``hw`` image, at least 1x1."""
    height, width = hw
    top = min(int(round(box[0] * height)), height - 1)
    left = min(int(round(box[1] * width)), width - 1)
    h = max(1, min(int(round(box[2] * height)), height - top))
    w = max(1, min(int(round(box[3] * width)), width - left))
    return top, left, h, w


def dct_scale(frame_hw: tuple[int, int], box: CropBox, out_hw: tuple[int, int]) -> int:
    """The largest JPEG DCT downscale (1, 2, 4 or 8) at which crop ``box`` still covers ``out_hw``.

    libjpeg-turbo decodes at 1/2, 1/4, 1/8 size much faster than at full size, but other factors
    (7/8, 3/4, ...) take its slow scaled-IDCT path (measured ~4x slower than a full decode), so
    only powers of two are used. Frames stored near the training size (240p) decode at full size.
    """
    for factor in (8, 4, 2):
        if frame_hw[0] * box[2] / factor >= out_hw[0] and frame_hw[1] * box[3] / factor >= out_hw[1]:
            return factor
    return 1


def resize_crop_into(frames: np.ndarray, frame_ids: list[int], box: CropBox, flip: bool,
                     out: np.ndarray) -> np.ndarray:
    """Crop ``box`` from the frames, resize (bilinear) and flip into ``out``.

    frames: uint8 ``(N, h, w, 3)`` distinct decoded frames; frame_ids: for each output frame, the
    index of its source in ``frames``; out: uint8 ``(T, H, W, 3)``, written in place. Each distinct
    frame is resized once (OpenCV's fixed-point SIMD bilinear, half-pixel centres like torch's
    ``align_corners=False``, about 2x faster than torch's uint8 kernel here); repeats are copies.
    """
    import cv2

    top, left, h, w = box_to_pixels(box, (frames.shape[1], frames.shape[2]))
    out_hw = out.shape[1:3]
    done: dict[int, int] = {}
    for t, source in enumerate(frame_ids):
        if source in done:
            np.copyto(out[t], out[done[source]])
            continue
        crop = frames[source, top:top + h, left:left + w]
        if (h, w) == tuple(out_hw):
            np.copyto(out[t], crop)
        else:
            cv2.resize(crop, (out_hw[1], out_hw[0]), dst=out[t], interpolation=cv2.INTER_LINEAR)
        if flip:
            cv2.flip(out[t], 1, dst=out[t])  # in place: swaps pixel pairs row by row
        done[source] = t
    return out


def resize_crop_frames(frames: torch.Tensor, box: CropBox, out_hw: tuple[int, int], flip: bool,
                       antialias: bool = False) -> torch.Tensor:
    """Crop ``box`` from every frame, resize to ``out_hw`` with torch (bilinear, optionally
    antialiased), flip. The loader's path when ``antialias`` is on.

    frames: uint8 ``(N, H, W, 3)``; returns uint8 ``(N, 3, h, w)`` in channels-last memory
    (torch's fast uint8 resampling path works on that layout; no float copy is made).
    """
    top, left, h, w = box_to_pixels(box, (frames.shape[1], frames.shape[2]))
    crop = frames[:, top:top + h, left:left + w, :].permute(0, 3, 1, 2)  # (N, 3, h, w) view, channels-last
    if (h, w) == tuple(out_hw):
        out = crop.contiguous(memory_format=torch.channels_last)
    else:
        out = F.interpolate(crop, size=tuple(out_hw), mode="bilinear", antialias=antialias, align_corners=False)
    if flip:
        out = out.flip(-1)
    return out


def normalize_video(video: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 video ``(B, 3, T, H, W)`` (any memory layout) -> contiguous ``dtype`` video,
    normalised with ImageNet mean/std, in one pass.

    Meant to run on the training device after a uint8 host-to-device copy: 4x fewer bytes than
    float32 over PCIe and no float buffers in host memory (see BENCHMARKS.md). Loader
    batches are in channels_last_3d layout (frames stay RGB-interleaved on the host); the output
    is contiguous whatever the input layout.
    """
    if video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"normalize_video expects (B, 3, T, H, W), got {tuple(video.shape)}")
    scale, shift = _normalisation(video.device, mean, std)
    out = torch.empty(video.shape, dtype=dtype, device=video.device)
    # (x / 255 - mean) / std == x * scale + shift: one fused multiply-add per element, computed in
    # float32 (uint8 promotes) and written once in the output dtype and layout.
    return torch.addcmul(shift, video, scale, out=out)


def _normalisation(device: torch.device, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) ``(3, 1, 1, 1)`` with ``(x / 255 - mean) / std == x * scale + shift``."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device).view(3, 1, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=device).view(3, 1, 1, 1)
    return scale, shift


def crop_resize_normalize(videos, boxes, flips, size: tuple[int, int], antialias: bool = False,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The device half of ``resize_on: device``: crop each sample's box, resize it to ``size``
    (bilinear, half-pixel centres, as the host path), flip, normalise (ImageNet mean/std).

    videos: B uint8 ``(3, T, h_i, w_i)`` tensors on the device (a sample's decoded frames; any
    memory layout; a ``(B, 3, T, H, W)`` tensor works too); boxes: B x (top, left, height, width)
    in pixels of each sample's frames; flips: B bools (host-side values: they index the video).
    Returns contiguous ``dtype`` ``(B, 3, T, H, W)``. Boxes and frame sizes differ per sample, so
    samples are resampled one by one (a handful of kernels each); no uint8 rounding happens
    between resize and normalisation.
    """
    if not len(videos) or videos[0].dim() != 4 or videos[0].shape[0] != 3:
        raise ValueError("crop_resize_normalize expects B videos of shape (3, T, h, w)")
    t = videos[0].shape[1]
    out = torch.empty((len(videos), 3, t, *size), dtype=dtype, device=videos[0].device)
    scale, shift = _normalisation(out.device)
    for i, (video, (top, left, h, w), flip) in enumerate(zip(videos, boxes, flips)):
        crop = video[:, :, top:top + h, left:left + w].float().reshape(1, 3 * t, h, w)
        if (h, w) != tuple(size):
            crop = F.interpolate(crop, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias)
        if flip:
            crop = crop.flip(-1)
        torch.addcmul(shift, crop.view(3, t, *size), scale, out=out[i])
    return out
