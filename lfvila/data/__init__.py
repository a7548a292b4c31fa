"""Streaming loader: shards -> training batches, exactly resumable.

``build_loader(cfg, split, rank=, world_size=, stage=, epoch_mode=)`` returns a
:class:`StreamingLoader`; batches are dicts (see ``lfvila.data.collate``); the trainer moves
``video`` (uint8) to the device and calls ``lfvila.data.transforms.normalize_video``.
"""
from lfvila.data.config import DataConfig
from lfvila.data.loader import StreamingLoader, build_loader
from lfvila.data.transforms import normalize_video

__all__ = ["DataConfig", "StreamingLoader", "build_loader", "normalize_video"]
