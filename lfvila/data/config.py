"""Config of the streaming loader: where the shards are and how a training sample is made.

Defaults are LF-VILA's (its paper and released code; docs/training.md): 4 consecutive sentences
per sample, 8 frames per sentence (T = 32), train crop 192x320 with scale (0.8, 1.0) and a
horizontal flip, validation resize 240x428 -> centre crop 90 % -> 192x320, 50 tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

SAMPLINGS = ("window", "whole_video")


def _check_pair(name: str, value: tuple, *, positive: bool = True) -> None:
    if len(value) != 2:
        raise ValueError(f"data.{name} must have 2 items, got {value!r}")
    if positive and not all(v > 0 for v in value):
        raise ValueError(f"data.{name} must be positive, got {value!r}")


@dataclass
class DataConfig:
    # Shard URLs: a webdataset brace pattern ("/data/shards/train-{000000..000099}.tar",
    # "pipe:curl -s https://host/train-{000000..000099}.tar", several joined with "::")
    # or an explicit list of URLs.
    train_shards: str | list[str] = ""
    val_shards: str | list[str] = ""
    batch_size: int = 16  # per rank (LF-VILA stage 1: 16 per GPU)
    num_workers: int = 4  # DataLoader worker processes per rank
    prefetch_factor: int = 2  # batches prefetched per worker
    pin_memory: bool = True  # only takes effect when CUDA is available
    n_sentences: int = 4  # M: consecutive sentences (clips) per sample
    frames_per_sentence: int = 8  # frames per sentence; T = n_sentences * frames_per_sentence
    # A sentence with fewer stored frames than this makes its sample unusable ("too_few_frames");
    # sentences with fewer than frames_per_sentence frames repeat frames (LF-VILA's rule).
    min_frames_per_sentence: int = 1
    crop: tuple[int, int] = (192, 320)  # output (H, W)
    scale: tuple[float, float] = (0.8, 1.0)  # RandomResizedCrop area fraction
    # Aspect-ratio jitter of the crop, relative to the output aspect (W/H = 320/192). torchvision's
    # default jitter is around 1:1, which on 16:9 frames at scale >= 0.8 almost always falls back to
    # a centre crop; jittering around the output aspect keeps the crop random and the distortion small.
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    # false: data.ratio is the crop's absolute W/H range, as torchvision's RandomResizedCrop and the
    # release (on 16:9 frames at scale >= 0.8 no try fits, so every train crop is the fixed centre
    # crop of aspect 4/3, resized to `crop`); true (lfvila): relative to the output aspect.
    ratio_relative_to_output: bool = True
    # true: the release's window choice, a random first sentence in [0, n - n_sentences), never the
    # last window of a long-form video; false (lfvila): every window, the last one included.
    window_excludes_last: bool = False
    hflip: bool = True  # horizontal flip with probability 0.5 (train)
    val_resize: tuple[int, int] = (240, 428)  # validation: resize to (H, W) ...
    val_crop_fraction: float = 0.9  # ... centre crop this fraction of each side, then resize to crop
    max_tokens: int = 50  # L: tokens per sentence including [CLS] and [SEP]
    # Local Hugging Face BERT directory (its tokenizer files) or "package:NAME" (see lfvila.text);
    # required by build_loader. Leave it empty in a training recipe: the trainer uses the model's
    # BERT (model.text.bert_dir), so tokenizer and text encoder cannot differ.
    bert_dir: str = ""
    shuffle_buffer: int = 256  # samples held per worker for shuffling (train only; 0 = off)
    resampled: bool = False  # infinite mode: draw shards with replacement instead of epochs
    seed: int = 0
    mlm_probability: float = 0.15  # stage 2: fraction of real tokens masked (80/10/10)
    error_log_interval_s: float = 30.0  # at most one log line per skip reason per interval
    # Antialiased resizing (torchvision >= 0.17's tensor default) costs about twice plain bilinear;
    # at the 0.8-1.0 crop scales of 240p frames the output shrinks by < 1.4x, where plain bilinear
    # (what tensor transforms of LF-VILA's time did) aliases little. See BENCHMARKS.md.
    antialias: bool = False
    jpeg_fast: bool = False  # simplejpeg fastdct/fastupsample (a few % faster, slightly lossy)
    # Where the crop box is resampled to `crop` (and flipped): "device" ships the decoded frames
    # (uint8, stored size or a power-of-two DCT downscale of it) with per-sample boxes and flips, and
    # `batch_to_device` crops, resizes, flips and normalises on the training device; "loader" does
    # the crop/resize/flip in the loader worker and ships 192x320 frames. Resizing costs the host
    # ~40 % of the JPEG decoding it follows (BENCHMARKS.md), a GPU next to nothing.
    resize_on: str = "device"
    # How a sample is drawn from a long-form video. "window" (pre-training): n_sentences
    # consecutive sentences, frames_per_sentence frames inside each. "whole_video" (paragraph
    # retrieval, as the release's retrieval datasets): n_frames = n_sentences x frames_per_sentence
    # frames spread over all the stored frames (train: jittered linspace, val: fixed linspace),
    # grouped as n_sentences clips, and the whole paragraph as text, merged down to
    # paragraph_sentences sentences (shortest adjacent pair first); see lfvila.data.sampling.
    sampling: str = "window"
    paragraph_sentences: int = 8  # whole_video: text slots per sample (fewer are padded and masked)
    # Largest frame width or height a sample's JSON may declare; larger is a bad_json skip. Every
    # frame's JPEG header must match the JSON's size before anything is allocated for it, so this
    # bounds the batch buffer (a header claiming 65500x65500 would otherwise size it at terabytes).
    max_frame_side: int = 4096
    # http(s):// shards (read with urllib): seconds to connect and get the response headers, with
    # no byte received mid-body, and for the whole shard. A shard over a limit ends in a
    # shard_timeout skip (its samples read so far are used). pipe: commands are the user's to bound
    # (e.g. curl --speed-time/--max-time).
    http_connect_timeout_s: float = 30.0
    http_stall_timeout_s: float = 60.0
    http_total_timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("train_shards", "val_shards"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = list(value)
                setattr(self, name, value)
            if not isinstance(value, (str, list)) or (
                isinstance(value, list) and not all(isinstance(v, str) and v for v in value)
            ):
                raise ValueError(f"data.{name} must be a URL pattern string or a list of URL strings, got {value!r}")
        for name in ("batch_size", "n_sentences", "frames_per_sentence", "min_frames_per_sentence",
                     "max_tokens", "prefetch_factor", "paragraph_sentences", "max_frame_side"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("num_workers", "shuffle_buffer", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"data.{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if self.max_tokens < 2:
            raise ValueError(f"data.max_tokens must be >= 2 ([CLS] and [SEP]), got {self.max_tokens}")
        if self.min_frames_per_sentence > self.frames_per_sentence:
            raise ValueError(
                f"data.min_frames_per_sentence ({self.min_frames_per_sentence}) must be <= "
                f"data.frames_per_sentence ({self.frames_per_sentence})")
        self.crop, self.val_resize = tuple(self.crop), tuple(self.val_resize)
        self.scale, self.ratio = tuple(self.scale), tuple(self.ratio)
        _check_pair("crop", self.crop)
        _check_pair("val_resize", self.val_resize)
        _check_pair("scale", self.scale)
        _check_pair("ratio", self.ratio)
        if not (self.scale[0] <= self.scale[1] <= 1.0):
            raise ValueError(f"data.scale must satisfy 0 < low <= high <= 1, got {self.scale!r}")
        if not self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"data.ratio must satisfy low <= high, got {self.ratio!r}")
        if not 0.0 < self.val_crop_fraction <= 1.0:
            raise ValueError(f"data.val_crop_fraction must be in (0, 1], got {self.val_crop_fraction}")
        if not 0.0 <= self.mlm_probability < 1.0:
            raise ValueError(f"data.mlm_probability must be in [0, 1), got {self.mlm_probability}")
        for name in ("http_connect_timeout_s", "http_stall_timeout_s", "http_total_timeout_s"):
            value = getattr(self, name)
            if type(value) not in (int, float) or not 0 < value < float("inf"):
                raise ValueError(f"data.{name} must be a number of seconds > 0, got {value!r}")
        if self.error_log_interval_s < 0:
            raise ValueError(f"data.error_log_interval_s must be >= 0, got {self.error_log_interval_s}")
        if self.resize_on not in ("device", "loader"):
            raise ValueError(f"data.resize_on must be 'device' or 'loader', got {self.resize_on!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"data.sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if not isinstance(self.bert_dir, str):
            raise ValueError(f"data.bert_dir must be a directory path or 'package:NAME', got {self.bert_dir!r}")

    @property
    def n_frames(self) -> int:
        """T: frames per sample."""
        return self.n_sentences * self.frames_per_sentence

    @property
    def text_slots(self) -> int:
        """M of ``text_ids``: sentences per sample (padded with zero ids and a False sentence_mask)."""
        return self.paragraph_sentences if self.sampling == "whole_video" else self.n_sentences

    def shards(self, split: str) -> str | list[str]:
        """The shard spec of ``split`` ("train" or "val")."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return self.train_shards if split == "train" else self.val_shards
