"""Streaming loader: shards -> training batches, exactly resumable.

``build_loader(cfg, split, rank=, world_size=, stage=, epoch_mode=)`` returns a
:class:`StreamingLoader`; batches are dicts (see ``lfvila.data.collate``);
``batch_to_device(batch, device)`` copies one to the training device and finishes its video there
(crop/resize/flip when the loader left them to the device, normalisation).
"""
from lfvila.data.config import DataConfig
from lfvila.data.device import batch_to_device
from lfvila.data.loader import StreamingLoader, build_loader
from lfvila.data.transforms import normalize_video

__all__ = ["DataConfig", "StreamingLoader", "batch_to_device", "build_loader", "normalize_video"]
