"""Losses, each its own module: global contrastive, MTC, MLM, VTM; LocVTP's soft-target contrastive,
clip-word and temporal-shift losses.

Losses hold no parameters (the heads live in the model); they take features and return a scalar.
"""
from lfvila.losses.clip_word import ClipWordDraw, ClipWordLoss, draw_clip_word
from lfvila.losses.contrastive import GlobalContrastiveLoss
from lfvila.losses.mlm import MLMLoss
from lfvila.losses.mtc import MTCDraw, MTCLoss, draw_mtc, mtc_labels
from lfvila.losses.soft_contrastive import SoftTargetContrastiveLoss
from lfvila.losses.temporal_shift import ShiftDraw, TemporalShiftLoss, draw_shifts
from lfvila.losses.vtm import VTMLoss, mismatch_pairs

__all__ = [
    "ClipWordDraw",
    "ClipWordLoss",
    "GlobalContrastiveLoss",
    "MLMLoss",
    "MTCDraw",
    "MTCLoss",
    "ShiftDraw",
    "SoftTargetContrastiveLoss",
    "TemporalShiftLoss",
    "VTMLoss",
    "draw_clip_word",
    "draw_mtc",
    "draw_shifts",
    "mismatch_pairs",
    "mtc_labels",
]
