"""Shard planning in bounded memory: the external sort gives exactly the in-memory plan's tasks."""
from __future__ import annotations

import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lfvila.shards.plan as plan_module
from lfvila.build_config import BuildConfig
from lfvila.config import load_config
from lfvila.shards.build import _RowGroupWriter
from lfvila.shards.fixtures import sentences_every, write_longform
from lfvila.shards.plan import PLAN_DIR, plan_shard_tasks
from lfvila.shards.task import task_fingerprint


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        vid = f"v{rng.randrange(10 ** 6):06d}"
        start = rng.randrange(0, 500)
        rows.append({"key": f"test~{vid}~{i:06d}", "video_id": vid, "split": rng.choice(["train", "train", "val", "test"]),
                     "sentences": sentences_every(start, start + rng.randrange(8, 40), 2.0, vid, text=f"t{i}")})
    rng.shuffle(rows)  # the manifest writes source order, not key order
    return rows


def _reference_plan(table_rows: list[dict], size: int) -> list[tuple[str, int, list[dict]]]:
    """The definition: per split in name order, rows in key order, consecutive groups of ``size``."""
    plan = []
    for split in sorted({r["split"] for r in table_rows}):
        rows = sorted((r for r in table_rows if r["split"] == split), key=lambda r: r["key"])
        plan += [(split, i, rows[lo:lo + size]) for i, lo in enumerate(range(0, len(rows), size))]
    return plan


@pytest.mark.parametrize("sort_batch, per_shard, fan_in", [(7, 4, 32), (1000, 5, 32), (1, 3, 2), (3, 4, 3)])
def test_external_sort_plan_equals_the_definition(tmp_path, monkeypatch, sort_batch, per_shard, fan_in):
    monkeypatch.setattr(plan_module, "SORT_BATCH_ROWS", sort_batch)  # many runs to merge
    monkeypatch.setattr(plan_module, "MERGE_BATCH_ROWS", 2)
    monkeypatch.setattr(plan_module, "RUN_ROW_GROUP_ROWS", 3)
    monkeypatch.setattr(plan_module, "MAX_FAN_IN", fan_in)  # 2 and 3: several merge passes
    write_longform(tmp_path / "longform.parquet", _rows(61))
    cfg = load_config(BuildConfig, None, [f"shards.samples_per_shard={per_shard}"])
    stored = pq.read_table(tmp_path / "longform.parquet").to_pylist()  # the rows as the old planner read them
    expected = _reference_plan(stored, per_shard)
    tasks = plan_shard_tasks(cfg, tmp_path)
    assert [(t.split, t.index) for t in tasks] == [(s, i) for s, i, _ in expected]
    for task, (_, _, rows) in zip(tasks, expected):
        assert task.load_rows() == rows
        assert task.fingerprint == task_fingerprint(rows, cfg)
        assert task.name == f"{task.split}-{task.index:06d}"
    assert not list((tmp_path / PLAN_DIR).glob("*/runs")) and not list((tmp_path / PLAN_DIR).glob(".*.tmp"))


def test_plan_is_reused_and_replaced_when_the_manifest_changes(tmp_path):
    write_longform(tmp_path / "longform.parquet", _rows(20))
    cfg = load_config(BuildConfig, None, ["shards.samples_per_shard=4"])
    first = plan_shard_tasks(cfg, tmp_path)
    plan_dirs = list((tmp_path / PLAN_DIR).iterdir())
    assert len(plan_dirs) == 1
    marker = plan_dirs[0] / "plan.json"
    stamp = marker.stat().st_mtime_ns
    assert plan_shard_tasks(cfg, tmp_path) == first and marker.stat().st_mtime_ns == stamp  # reused, not redone
    other = load_config(BuildConfig, None, ["shards.samples_per_shard=4", "video.fps=2"])
    assert [t.fingerprint for t in plan_shard_tasks(other, tmp_path)] != [t.fingerprint for t in first]
    write_longform(tmp_path / "longform.parquet", _rows(9, seed=1))
    os.utime(tmp_path / "longform.parquet", ns=(stamp + 10 ** 9, stamp + 10 ** 9))
    again = plan_shard_tasks(cfg, tmp_path)
    assert sum(t.n_rows for t in again) == 9
    assert len(list((tmp_path / PLAN_DIR).iterdir())) == 1  # the older plans are gone


@pytest.mark.parametrize("where", ["same run", "other runs", "other splits"])
def test_a_repeated_key_is_refused_wherever_its_copies_are(tmp_path, monkeypatch, where):
    monkeypatch.setattr(plan_module, "SORT_BATCH_ROWS", 1000 if where == "same run" else 3)
    rows = _rows(12)
    twin = dict(rows[0], split="val" if rows[0]["split"] != "val" else "train") if where == "other splits" else dict(rows[0])
    rows.insert(9, twin)
    write_longform(tmp_path / "longform.parquet", rows)
    with pytest.raises(ValueError, match="occurs twice"):
        plan_shard_tasks(load_config(BuildConfig, None, []), tmp_path)
    assert not list((tmp_path / PLAN_DIR).iterdir())  # no half-written plan left


def test_a_key_that_is_not_a_webdataset_key_is_refused(tmp_path):
    rows = _rows(5)
    rows[3]["key"] = "test~a.b~000001"
    write_longform(tmp_path / "longform.parquet", rows)
    with pytest.raises(ValueError, match="contains '.' or '/'"):
        plan_shard_tasks(load_config(BuildConfig, None, []), tmp_path)


@pytest.mark.parametrize("sizes", [[0], [3, 0, 4], [5, 5], [2, 9, 1, 0, 7], [12]])
def test_row_group_writer_is_byte_identical_to_one_write_of_everything(tmp_path, monkeypatch, sizes):
    monkeypatch.setattr(_RowGroupWriter, "ROW_GROUP_ROWS", 5)
    start, tables = 0, []
    for n in sizes:
        tables.append(pa.table({"key": [f"k{i}" for i in range(start, start + n)], "x": list(range(start, start + n))},
                               schema=pa.schema([("key", pa.string()), ("x", pa.int64())])))
        start += n
    pq.write_table(pa.concat_tables(tables), tmp_path / "one.parquet", row_group_size=5)
    writer = _RowGroupWriter(tmp_path / "streamed.parquet")
    for t in tables:
        writer.write(t)
    writer.close()
    assert (tmp_path / "streamed.parquet").read_bytes() == (tmp_path / "one.parquet").read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


def test_limit_plans_the_first_n_longform_videos_of_each_split(tmp_path):
    write_longform(tmp_path / "longform.parquet", _rows(40))
    cfg = load_config(BuildConfig, None, ["shards.samples_per_shard=3"])
    stored = pq.read_table(tmp_path / "longform.parquet").to_pylist()
    first = {split: sorted(r["key"] for r in stored if r["split"] == split)[:5] for split in ("train", "val", "test")}
    tasks = plan_shard_tasks(cfg, tmp_path, limit=5)
    got = {}
    for t in tasks:
        got.setdefault(t.split, []).extend(r["key"] for r in t.load_rows())
    assert got == first
    assert [t.n_rows for t in tasks if t.split == "train"] == [3, 2]
    assert len(plan_shard_tasks(cfg, tmp_path)) > len(tasks)  # without the limit: the whole corpus


def test_limited_build_then_full_build_equals_a_full_build(tmp_path):
    from lfvila.shards.build import build_shards
    from lfvila.shards.fixtures import make_colour_video

    videos = tmp_path / "videos"
    videos.mkdir()
    make_colour_video(videos / "colour.mp4", 6)
    rows = [{"key": f"r{i}", "video_id": "colour", "split": "train" if i % 3 else "val",
             "sentences": sentences_every(0.2 * i, 0.2 * i + 3, 1.0, "colour")} for i in range(7)]
    cfg = load_config(BuildConfig, None, ["shards.samples_per_shard=2", "video.fps=1"])
    for corpus in ("limited", "whole"):
        write_longform(tmp_path / corpus / "longform.parquet", rows)
    partial = build_shards(cfg, tmp_path / "limited", videos, limit=3)
    assert partial["limit"] == {"longform_videos_per_split": 3}
    assert partial["splits"]["train"]["samples_planned"] == 3 and partial["splits"]["val"]["samples_planned"] == 3
    completed = build_shards(cfg, tmp_path / "limited", videos)
    whole = build_shards(cfg, tmp_path / "whole", videos)
    assert "limit" not in completed and completed == whole
    names = sorted(p.name for p in (tmp_path / "whole" / "shards").iterdir())
    assert sorted(p.name for p in (tmp_path / "limited" / "shards").iterdir()) == names
    for name in names:
        assert (tmp_path / "limited" / "shards" / name).read_bytes() == (tmp_path / "whole" / "shards" / name).read_bytes()


def test_cli_limit_must_be_positive(tmp_path, capsys):
    from lfvila.cli import main

    write_longform(tmp_path / "c" / "longform.parquet", _rows(3))
    (tmp_path / "v").mkdir()
    assert main(["build", "--out", str(tmp_path / "c"), "--stage", "shards", "--videos", str(tmp_path / "v"),
                 "--limit", "0"]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err


def test_fingerprint_from_the_rows_json_equals_task_fingerprint():
    """The planner hashes rows it encoded once; the hash must be task_fingerprint's exactly."""
    from lfvila.shards.task import fingerprint_of_rows_json, fingerprint_settings_json, row_json

    rows = _rows(5)
    rows[0]["sentences"][0]["text"] = 'quotes " \\ back\\slash, unicode é 漢字 \u2028 and \x00'
    rows[1]["video_duration"] = None
    rows[2]["start"] = 1e300
    cfg = load_config(BuildConfig, None, ["video.fps=2.5"])
    rows_json = "[" + ", ".join(row_json(r) for r in rows) + "]"
    assert fingerprint_of_rows_json(rows_json, fingerprint_settings_json(cfg)) == task_fingerprint(rows, cfg)


def test_plan_paths_are_absolute_and_stale_temporaries_go(tmp_path, monkeypatch):
    write_longform(tmp_path / "c" / "longform.parquet", _rows(6))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(BuildConfig, None, [])
    killed = tmp_path / "c" / PLAN_DIR / ".olddigest.abc.tmp"
    fresh = tmp_path / "c" / PLAN_DIR / ".otherpart.def.tmp"
    killed.mkdir(parents=True)
    fresh.mkdir()
    os.utime(killed, (0, 0))  # left by a run killed long ago
    tasks = plan_shard_tasks(cfg, "c")  # a relative --out, as the CLI passes it
    assert all(os.path.isabs(t.plan_file) for t in tasks)
    assert not killed.exists() and fresh.exists()  # a part planning right now keeps its temporary


def _reference_plan_by_bytes(table_rows: list[dict], size: int, target: int, frame_bytes: int, fps: float):
    """The definition of byte sizing: a shard ends at ``size`` rows, or before a row whose estimated
    bytes (stored frames: grid slots inside a sentence span, times ``frame_bytes``) would pass ``target``."""
    from lfvila.video.decode import slot_at_or_after

    def estimate(row):
        slots = set()
        for s in row["sentences"]:
            slots.update(range(slot_at_or_after(s["start"], row["start"], fps), slot_at_or_after(s["end"], row["start"], fps)))
        return len(slots) * frame_bytes

    plan = []
    for split in sorted({r["split"] for r in table_rows}):
        groups, group, total = [], [], 0
        for row in sorted((r for r in table_rows if r["split"] == split), key=lambda r: r["key"]):
            if group and total + estimate(row) > target:
                groups.append(group)
                group, total = [], 0
            group.append(row)
            total += estimate(row)
            if len(group) == size:
                groups.append(group)
                group, total = [], 0
        groups += [group] if group else []
        plan += [(split, i, g) for i, g in enumerate(groups)]
    return plan


@pytest.mark.parametrize("target, per_shard, frames", [(60_000, 100, "jpeg"), (400_000, 3, "jpeg"), (25_000, 100, "h264"),
                                                        (1, 100, "jpeg")])
def test_target_bytes_plan_equals_the_definition(tmp_path, monkeypatch, target, per_shard, frames):
    monkeypatch.setattr(plan_module, "SORT_BATCH_ROWS", 7)  # several runs to merge
    monkeypatch.setattr(plan_module, "RUN_ROW_GROUP_ROWS", 3)
    monkeypatch.setattr(plan_module, "MAX_FAN_IN", 2)  # several merge passes, the estimates carried along
    rows = _rows(61)
    for i, row in enumerate(rows[::5]):  # overlapping sentences share frames: counted once
        row["sentences"] = row["sentences"] + [dict(row["sentences"][0], clip_id=f"{row['video_id']}.99.mp4")]
    write_longform(tmp_path / "longform.parquet", rows)
    cfg = load_config(BuildConfig, None, [f"shards.samples_per_shard={per_shard}", f"shards.target_bytes={target}",
                                          f"shards.frames={frames}"])
    stored = pq.read_table(tmp_path / "longform.parquet").to_pylist()
    expected = _reference_plan_by_bytes(stored, per_shard, target, plan_module.frame_bytes_estimate(cfg), cfg.video.fps)
    tasks = plan_shard_tasks(cfg, tmp_path)
    assert [(t.split, t.index, t.load_rows()) for t in tasks] == expected
    assert all(t.fingerprint == task_fingerprint(rows, cfg) for t, (_, _, rows) in zip(tasks, expected))
    if target == 1:  # every row is over the target: shards of one
        assert all(t.n_rows == 1 for t in tasks)
    # The count limit still applies, and by bytes the shards differ from a count-only plan.
    assert max(t.n_rows for t in tasks) <= per_shard
    assert [t.n_rows for t in tasks] != [t.n_rows for t in plan_shard_tasks(
        load_config(BuildConfig, None, [f"shards.samples_per_shard={per_shard}", f"shards.frames={frames}"]), tmp_path)]


def test_target_bytes_estimate_follows_the_frame_size_and_can_be_given():
    jpeg = plan_module.frame_bytes_estimate(BuildConfig())
    assert jpeg == plan_module.MEASURED_FRAME_BYTES_240P["jpeg"]
    assert plan_module.frame_bytes_estimate(load_config(BuildConfig, None, ["video.frame_height=480"])) == 4 * jpeg
    assert plan_module.frame_bytes_estimate(load_config(BuildConfig, None, ["shards.estimated_frame_bytes=7"])) == 7
    with pytest.raises(ValueError, match="shards.target_bytes"):
        load_config(BuildConfig, None, ["shards.target_bytes=0"])


def test_target_bytes_is_in_the_fingerprint_only_when_set():
    from lfvila.shards.task import fingerprint_settings

    assert "target_bytes" not in fingerprint_settings(BuildConfig())["shards"]
    assert fingerprint_settings(load_config(BuildConfig, None, ["shards.target_bytes=5000000"]))["shards"][
        "target_bytes"] == 5_000_000
