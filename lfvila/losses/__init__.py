"""Losses, each its own module: global contrastive, MTC, MLM, VTM.

Losses hold no parameters (the heads live in the model); they take features and return a scalar.
"""
from lfvila.losses.contrastive import GlobalContrastiveLoss
from lfvila.losses.mlm import MLMLoss
from lfvila.losses.mtc import MTCDraw, MTCLoss, draw_mtc, mtc_labels
from lfvila.losses.vtm import VTMLoss, mismatch_pairs

__all__ = [
    "GlobalContrastiveLoss",
    "MLMLoss",
    "MTCDraw",
    "MTCLoss",
    "VTMLoss",
    "draw_mtc",
    "mismatch_pairs",
    "mtc_labels",
]
