"""Streaming trainer: step-based loop, checkpoints, evaluation."""
