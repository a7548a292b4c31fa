"""What an existing ``--out`` directory holds, and whether a new manifest may be built into it.

A corpus directory belongs to one set of inputs: its ``corpus.json`` records them. Building other
inputs into it would leave the old corpus's shards beside the new ones (a brace pattern over
``train-{000000..000009}.tar`` picks them up) and a ``corpus.json`` describing both, so it is
refused unless the caller asks to replace the corpus (``overwrite``). The same inputs with another
recipe is the documented way to rebuild: allowed, and the shard stage's summary, which described
the old shards, is dropped (the shard stage redoes what changed and removes shards the new plan
does not have).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from lfvila.errors import UserError

log = logging.getLogger(__name__)


def _read_corpus(out: Path) -> dict | None:
    try:
        corpus = json.loads((out / "corpus.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return corpus if isinstance(corpus, dict) else {}


def _write_corpus(out: Path, corpus: dict) -> None:
    tmp = out / ".corpus.json.prepare.tmp"
    tmp.write_text(json.dumps(corpus, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / "corpus.json")


def prepare_manifest_out(out: str | os.PathLike, config: dict, sources: list[str], *, overwrite: bool = False) -> str:
    """Check (and with ``overwrite`` clear) ``out`` before a manifest is built into it; returns what was done.

    ``config`` is the resolved recipe as a plain dict, ``sources`` the ``FORMAT:PATH`` strings.
    Raises ``UserError`` when ``out`` holds a corpus of other inputs and ``overwrite`` is False.
    """
    out = Path(out)
    corpus = _read_corpus(out)
    if corpus is None:  # no corpus yet; shards without one are left from something else
        if (out / "shards").exists():
            if not overwrite:
                raise UserError(f"{out} holds shards but no corpus.json; use a new --out, or --overwrite to "
                                f"replace them")
            shutil.rmtree(out / "shards")
            return f"--overwrite: removed {out / 'shards'} (no corpus.json)"
        return ""
    recorded_sources = [i.get("source") for i in corpus.get("inputs", [])]
    if recorded_sources != list(sources):
        if not overwrite:
            raise UserError(
                f"{out} already holds a corpus built from {', '.join(map(str, recorded_sources)) or 'unknown inputs'}, "
                f"not {', '.join(sources)}; use a new --out, or --overwrite to replace it (its shards are removed)")
        removed = out / "shards"
        if removed.exists():
            shutil.rmtree(removed)
        corpus.pop("video", None)
        _write_corpus(out, corpus)
        return (f"--overwrite: replacing the corpus in {out} (built from {', '.join(map(str, recorded_sources))}); "
                f"removed its shards")
    if overwrite and (out / "shards").exists():
        shutil.rmtree(out / "shards")
        corpus.pop("video", None)
        _write_corpus(out, corpus)
        return f"--overwrite: removed the shards in {out / 'shards'}"
    if corpus.get("config") != config and "video" in corpus:
        corpus.pop("video")
        _write_corpus(out, corpus)
        return (f"{out}: same inputs, another recipe: the manifest is rebuilt; shards whose samples change are "
                f"rebuilt by the shard stage, shards the new plan does not have are removed")
    return ""
