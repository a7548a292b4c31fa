"""Losses, each its own module: global contrastive, MTC, MLM, VTM."""
