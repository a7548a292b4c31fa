"""Root config of ``lfvila build`` and ``lfvila download``: manifest, video, shard and download sections.

A corpus recipe (``pipelines/*.yaml``) is a YAML file of this tree; the resolved tree is
written to ``OUT/corpus.json`` next to every corpus, and later stages of that corpus read it
(``corpus_config``).
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from lfvila.config import apply_overrides, from_dict, load_config, to_dict
from lfvila.errors import ConfigError, UserError
from lfvila.download.config import DownloadConfig
from lfvila.manifest.config import ManifestConfig
from lfvila.shards.config import ShardConfig
from lfvila.video.config import VideoConfig


@dataclass
class BuildConfig:
    manifest: ManifestConfig = field(default_factory=ManifestConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)


# Settings that change how a build runs, not what it writes (the shard stage's fingerprint leaves
# them out too): they may differ between the stages of one corpus.
RUNTIME_KEYS = tuple(f"video.{k}" for k in ("decoder_threads", "timeout_s", "timeout_per_video_s"))


def recorded_config(out: str | os.PathLike) -> dict | None:
    """The resolved recipe recorded in ``OUT/corpus.json`` by the manifest stage, or None."""
    path = Path(out) / "corpus.json"
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("config")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as exc:
        raise UserError(f"{path} is unreadable ({exc}); rebuild the manifest (--stage manifest)") from None
    return recorded if isinstance(recorded, dict) else None


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def corpus_config(out: str | os.PathLike, config_path: str | os.PathLike | None = None,
                  overrides: list[str] | None = None) -> BuildConfig:
    """The recipe for a later stage of an existing corpus: the one its manifest was built with.

    ``config_path`` and ``overrides`` may only restate it or change runtime settings
    (``RUNTIME_KEYS``); anything else would build shards that disagree with the manifest and with
    what corpus.json says, and is refused. Without a recorded recipe (no corpus.json yet) the
    given recipe is used as it is.
    """
    recorded = recorded_config(out)
    if recorded is None:
        return load_config(BuildConfig, config_path, overrides)
    if config_path is None:
        # --set alone applies on top of the recorded recipe, not on top of the defaults.
        requested = from_dict(BuildConfig, apply_overrides(copy.deepcopy(recorded), list(overrides or [])))
    else:
        requested = load_config(BuildConfig, config_path, overrides)
    given, before = _flatten(to_dict(requested)), _flatten(to_dict(from_dict(BuildConfig, recorded)))
    changed = [k for k in sorted(set(given) | set(before)) if k not in RUNTIME_KEYS and given.get(k) != before.get(k)]
    if changed:
        shown = ", ".join(f"{k} {before.get(k)!r} -> {given.get(k)!r}" for k in changed[:6])
        more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
        raise ConfigError(
            f"{Path(out) / 'corpus.json'} records the recipe this corpus's manifest was built with, and "
            f"--config/--set change it: {shown}{more}. Drop them to use the recorded recipe, or rebuild the "
            f"manifest with the new one (--stage manifest or --stage all); at --stage shards only runtime "
            f"settings may change ({', '.join(RUNTIME_KEYS)})")
    return requested
