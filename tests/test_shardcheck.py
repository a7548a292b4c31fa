"""Shard specs checked before a run: found / missing / unreadable / remote, and sample counts."""
from __future__ import annotations

import json

import pytest

from lfvila.data.shardcheck import check_shards
from lfvila.errors import ConfigError
from lfvila.testing import write_synthetic_shards


def test_counts_from_tar_headers_stats_files_and_statuses(tmp_path):
    paths = write_synthetic_shards(tmp_path, n_samples=7, samples_per_shard=4, split="train", seed=0)  # 4 + 3
    (tmp_path / "train-000002.tar").write_bytes(b"not a tar at all" * 64)
    check = check_shards(f"{tmp_path}/train-{{000000..000003}}.tar::pipe:cat {paths[0]}", "train")
    assert check.status == ["found", "found", "unreadable", "missing", "remote"]
    assert check.samples == [4, 3, None, None, None]
    assert check.usable == 3 and check.n_samples == 7
    assert check.summary() == (f"train: 2 of 5 shards found, 1 missing ({tmp_path}/train-000003.tar), 1 unreadable "
                               f"({tmp_path}/train-000002.tar), 1 remote (not checked); 7 samples")
    # the shard stage's stats file is believed (a corpus of thousands of shards is not opened)
    (tmp_path / "train-000000.stats.json").write_text(json.dumps({"samples_written": 40}))
    assert check_shards(paths, "train").samples == [40, 3]
    # past max_counted, shards without stats are only checked to exist
    limited = check_shards(paths, "train", max_counted=0)
    assert limited.samples == [40, None] and limited.usable == 2
    assert limited.summary().endswith("; 40 samples in 1 counted shards")


def test_globs_are_refused_and_empty_shards_are_not_usable(tmp_path):
    with pytest.raises(ConfigError, match="globs are not supported"):
        check_shards(f"{tmp_path}/train-*.tar", "train")
    empty = write_synthetic_shards(tmp_path, n_samples=0, split="val")
    import tarfile

    with tarfile.open(tmp_path / "val-000000.tar", "w"):
        pass
    check = check_shards(str(tmp_path / "val-000000.tar"), "val")
    assert empty == [] and check.samples == [0] and check.usable == 0 and "1 empty" in check.summary()
