"""Root config of ``lfvila build``: manifest, video and shard sections.

A corpus recipe (``pipelines/*.yaml``) is a YAML file of this tree; the resolved tree is
written to ``OUT/corpus.json`` next to every corpus.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lfvila.manifest.config import ManifestConfig
from lfvila.shards.config import ShardConfig, VideoConfig


@dataclass
class BuildConfig:
    manifest: ManifestConfig = field(default_factory=ManifestConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
