"""Config of the manifest stage: validation tolerances, ASR sentence building, merge and split."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AsrConfig:
    """How raw ASR fragments (HowTo100M, subtitles) become sentences; see docs/manifest.md."""

    # Sentence splitter for punctuated text, "pysbd" or "punkt": pysbd was the more accurate on the
    # measured comparison (docs/manifest.md), punkt was 16-21 times faster.
    splitter: str = "pysbd"
    # A video's text counts as punctuated when at least this fraction of its words end in . ? or !
    punctuated_min_ratio: float = 0.02
    pause_s: float = 0.8  # a gap between words of at least this long ends an unpunctuated sentence
    max_sentence_s: float = 15.0  # longer sentences are cut at their largest internal pause
    max_sentence_words: int = 40
    min_sentence_words: int = 3  # a cut never leaves a piece shorter than this (unless the text is)
    # A word lasts at most this long: ASR cues can stay on screen through minutes of silence, and a
    # sentence's span should cover the speech, not the silence after it.
    max_word_s: float = 2.0
    overlap_window_words: int = 64  # how far back rolling duplication is searched for

    def __post_init__(self) -> None:
        if self.splitter not in ("punkt", "pysbd"):
            raise ValueError(f"manifest.asr.splitter must be 'punkt' or 'pysbd', got {self.splitter!r}")
        if not 0.0 <= self.punctuated_min_ratio <= 1.0:
            raise ValueError(f"manifest.asr.punctuated_min_ratio must be in [0, 1], got {self.punctuated_min_ratio}")
        if self.pause_s <= 0:
            raise ValueError(f"manifest.asr.pause_s must be > 0, got {self.pause_s}")
        if self.max_sentence_s <= 0:
            raise ValueError(f"manifest.asr.max_sentence_s must be > 0, got {self.max_sentence_s}")
        if self.max_sentence_words < 1:
            raise ValueError(f"manifest.asr.max_sentence_words must be >= 1, got {self.max_sentence_words}")
        if not 1 <= self.min_sentence_words <= self.max_sentence_words:
            raise ValueError(
                f"manifest.asr.min_sentence_words must be in [1, max_sentence_words], got {self.min_sentence_words}")
        if self.max_word_s <= 0:
            raise ValueError(f"manifest.asr.max_word_s must be > 0, got {self.max_word_s}")
        if self.overlap_window_words < 1:
            raise ValueError(f"manifest.asr.overlap_window_words must be >= 1, got {self.overlap_window_words}")


@dataclass
class ManifestConfig:
    """Manifest stage: sources -> validated clips -> long-form videos (runs of consecutive clips)."""

    min_clips: int = 4  # LF-VILA keeps runs of at least 4 consecutive clips
    val_fraction: float = 0.01  # share of videos (by a hash of the video id alone) in the val split
    # Runs longer than either limit are cut into consecutive pieces; pieces below min_clips are dropped
    # from the long-form table (their clips stay in clips.parquet). None means no limit.
    max_clips: int | None = None
    max_duration_s: float | None = None
    # Non-hdvila sources: the next clip continues a run when it starts at most max_gap_s after the
    # previous clip ends and overlaps it by at most max_overlap_s. None means no limit.
    max_gap_s: float | None = 3.0
    max_overlap_s: float | None = 0.5
    # A clip ending at most this far past the known video duration is clamped to it and counted as
    # clamped (ActivityNet Captions rounds durations to 0.01 s); further past is rejected.
    duration_tolerance_s: float = 0.01
    max_id_length: int = 200  # longer video/clip ids are rejected as unsafe
    # "train" or "val" puts every long-form video in that split (e.g. building ActivityNet val_1 as an
    # evaluation corpus); None splits by a hash of the video id with val_fraction.
    force_split: str | None = None
    # The released LF-VILA-8M runs (lfvila8m_clipid.jsonl, one long-form video per line): hdvila
    # sources make exactly those long-form videos instead of deriving runs (lfvila/manifest/runs_file.py).
    runs_file: str | None = None
    asr: AsrConfig = field(default_factory=AsrConfig)

    def __post_init__(self) -> None:
        if self.min_clips < 1:
            raise ValueError(f"manifest.min_clips must be >= 1, got {self.min_clips}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"manifest.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_clips is not None and self.max_clips < self.min_clips:
            raise ValueError(f"manifest.max_clips must be >= min_clips ({self.min_clips}), got {self.max_clips}")
        if self.max_duration_s is not None and self.max_duration_s <= 0:
            raise ValueError(f"manifest.max_duration_s must be > 0, got {self.max_duration_s}")
        if self.max_gap_s is not None and self.max_gap_s < 0:
            raise ValueError(f"manifest.max_gap_s must be >= 0, got {self.max_gap_s}")
        if self.max_overlap_s is not None and self.max_overlap_s < 0:
            raise ValueError(f"manifest.max_overlap_s must be >= 0, got {self.max_overlap_s}")
        if self.duration_tolerance_s < 0:
            raise ValueError(f"manifest.duration_tolerance_s must be >= 0, got {self.duration_tolerance_s}")
        if self.force_split not in (None, "train", "val"):
            raise ValueError(f"manifest.force_split must be null, 'train' or 'val', got {self.force_split!r}")
        if not 8 <= self.max_id_length <= 1000:
            raise ValueError(f"manifest.max_id_length must be in [8, 1000], got {self.max_id_length}")
