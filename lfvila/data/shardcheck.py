"""What a shard spec names, checked before a run builds its model: found / missing shards and samples.

A spec is a brace pattern (``train-{000000..000009}.tar``, several joined by ``::``) or a list of
URLs, expanded as the loader expands it. Shell globs (``*``, ``?``, ``[...]``) are not expanded by
the loader, so a spec holding one is refused with the brace pattern to use instead. A local
shard's samples come from the shard stage's ``NAME.stats.json`` beside it (``samples_written``),
else from its tar headers (one ``KEY.json`` per sample, no member data read) for the first
``max_counted`` such shards only, so a corpus of many thousands of shards is checked in seconds
(the rest are checked to exist); ``pipe:`` and URL shards (``scheme://``) are listed as
``remote``, not checked (the time for 5,000 shards: BENCHMARKS.md, "Shard check before training").

Each shard gets a status from a fixed vocabulary: ``found``, ``damaged`` (a bad header or an end
inside a member past its first header: the loader reads what is intact and counts the rest),
``missing``, ``unreadable`` (not a tar), ``remote``. Headers are walked with the loader's checks
(``reader.count_json_members``), not tarfile's, which looped forever on a negative member size.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from lfvila.data.reader import TarFormatError, count_json_members
from lfvila.data.shardlists import expand_shards
from lfvila.errors import ConfigError

STATUSES = ("found", "damaged", "missing", "unreadable", "remote")
_GLOB = re.compile(r"[*?\[]")


@dataclass
class ShardCheck:
    """One split's shards: each URL's status and sample count (None where not counted)."""

    split: str
    spec: str | list[str]
    urls: list[str]
    status: list[str]
    samples: list[int | None]
    reasons: dict[str, str]  # url -> why it is unreadable or damaged

    def count(self, status: str) -> int:
        return sum(s == status for s in self.status)

    @property
    def usable(self) -> int:
        """Shards the loader may read: found locally and not known to be empty, damaged past their
        first member (the loader reads what is intact), or remote (unchecked)."""
        return sum(s in ("remote", "damaged") or (s == "found" and n != 0) for s, n in zip(self.status, self.samples))

    @property
    def n_samples(self) -> int:
        return sum(n or 0 for n in self.samples)

    def summary(self) -> str:
        """One line, e.g. ``train: 4 of 5 shards found, 1 missing (corpus/train-000004.tar); 32 samples``."""
        parts = [f"{self.count('found')} of {len(self.urls)} shards found"]
        for status in ("damaged", "missing", "unreadable"):
            names = [u for u, s in zip(self.urls, self.status) if s == status]
            if names:
                shown = ", ".join(names[:3]) + (f", ... ({len(names) - 3} more)" if len(names) > 3 else "")
                parts.append(f"{len(names)} {status} ({shown})")
        if self.count("remote"):
            parts.append(f"{self.count('remote')} remote (not checked)")
        empty = sum(s == "found" and n == 0 for s, n in zip(self.status, self.samples))
        if empty:
            parts.append(f"{empty} empty")
        uncounted = sum(s == "found" and n is None for s, n in zip(self.status, self.samples))
        counted = f" in {self.count('found') - uncounted} counted shards" if uncounted else ""
        return f"{self.split}: " + ", ".join(parts) + f"; {self.n_samples} samples{counted}"


def _is_remote(url: str) -> bool:
    return url.startswith("pipe:") or ("://" in url and not url.startswith("file://"))


def count_tar_samples(path: Path) -> int:
    """Samples in a shard: members named ``KEY.json`` (headers only; member data is skipped).
    Raises TarFormatError for a damaged tar (see reader.count_json_members)."""
    return count_json_members(str(path))


def _stats_samples(path: Path) -> int | None:
    """``samples_written`` from the shard stage's stats file beside ``path``, when there is one."""
    stats = path.with_name(path.name[: -len(".tar")] + ".stats.json") if path.name.endswith(".tar") else None
    if stats is None or not stats.is_file():
        return None
    try:
        return int(json.loads(stats.read_text(encoding="utf-8"))["samples_written"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not ours or damaged: count the tar instead


def check_shards(spec: str | list[str], split: str, max_counted: int = 64) -> ShardCheck:
    """Expand ``spec`` and check every shard it names; ``ConfigError`` for a spec with a shell glob.

    Tar headers are read for at most ``max_counted`` shards without a stats file."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    for one in specs:
        for part in str(one).split("::"):
            if _GLOB.search(part) and not _is_remote(part):
                raise ConfigError(
                    f"data.{split}_shards: {part!r} is a shell glob; globs are not supported. Name the shards "
                    "with a brace pattern, e.g. 'corpus/shards/train-{000000..000009}.tar', or a list")
    urls = expand_shards(spec) if spec else []
    status: list[str] = []
    samples: list[int | None] = []
    reasons: dict[str, str] = {}
    for url in urls:
        if _is_remote(url):
            status.append("remote")
            samples.append(None)
            continue
        path = Path(url[len("file://"):] if url.startswith("file://") else url)
        if not path.is_file():
            status.append("missing")
            samples.append(None)
            continue
        known = _stats_samples(path)
        if known is not None or max_counted <= 0:
            samples.append(known)
            status.append("found")
            continue
        max_counted -= 1
        try:
            samples.append(count_tar_samples(path))
            status.append("found")
        except (TarFormatError, OSError) as exc:
            status.append("damaged" if getattr(exc, "offset", None) else "unreadable")
            samples.append(None)
            reasons[url] = str(exc)
    return ShardCheck(split=split, spec=spec, urls=urls, status=status, samples=samples, reasons=reasons)
