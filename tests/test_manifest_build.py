"""The manifest stage end to end: real ActivityNet numbers, the CLI, reruns, corpus.json, recipes."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lfvila.build_config import BuildConfig
from lfvila.cli import main
from lfvila.config import load_config
from lfvila.manifest.build import build_manifest
from lfvila.manifest.config import ManifestConfig
from lfvila.manifest.tables import CLIPS_SCHEMA, LONGFORM_SCHEMA, REJECTS_SCHEMA

REPO = Path(__file__).resolve().parents[1]
TABLES = ("clips.parquet", "rejects.parquet", "longform.parquet")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_activitynet_train_numbers(shared_data, tmp_path):
    train = shared_data / "annotations/activitynet_captions/train.json"
    cfg = load_config(BuildConfig, REPO / "pipelines/retrieval_activitynet.yaml")
    counts = build_manifest(cfg, tmp_path, [f"activitynet:{train}"])
    src = counts["sources"][f"activitynet:{train}"]
    assert src["input_records"] == 37421
    assert src["rejects_by_reason"] == {"end_not_after_start": 4} and src["rejected"] == 4
    assert src["clamped"] == 29 and src["float_noise_snapped"] == 232
    assert src["kept_clips"] == src["accepted_records"] == 37421 - 4
    # One long-form video per annotated video: every kept clip is in one, none left to the merge.
    assert src["clips_in_longform"] == 37417 and src["merge_rejected"] == 0 and src["merge_rejects_by_reason"] == {}
    rejects = pq.read_table(tmp_path / "rejects.parquet").to_pylist()
    assert sorted(r["detail"] for r in rejects) == ["end before start"] * 2 + ["zero-length span"] * 2
    assert {r["video_id"] for r in rejects} == {"v_N7ppHQNikv8", "v_4rKTw99bM8g", "v_0bosp4-pyTM", "v_rhOtqArO-3Y"}
    clips = pq.read_table(tmp_path / "clips.parquet", columns=["end", "video_duration", "clamped"]).to_pydict()
    assert sum(clips["clamped"]) == 29
    assert all(e <= d for e, d in zip(clips["end"], clips["video_duration"]))
    # One long-form video per annotated video, all its sentences in time order.
    longform = pq.read_table(tmp_path / "longform.parquet")
    assert longform.num_rows == 10009 and counts["longform"]["train"]["videos"] == 10009
    assert sum(longform.column("n_clips").to_pylist()) == 37417
    first = longform.slice(0, 1).to_pylist()[0]
    assert first["video_id"] == "v_QOlSCBRmfWY" and first["key"] == "activitynet~v_QOlSCBRmfWY~000001"
    starts = [s["start"] for s in first["sentences"]]
    assert starts == sorted(starts) and first["sentences"][0]["text"].startswith("A young woman")


def test_cli_end_to_end_all_sources_and_identical_rerun(shared_data, tmp_path):
    ann = shared_data / "annotations"
    hdvila = tmp_path / "hdvila.jsonl"
    with open(hdvila, "w") as f:
        for v in range(6):
            numbers = [1, 2, 3, 4, 5, 7, 8] if v % 2 else [1, 2, 3, 5]
            clips = [{"clip_id": f"vid{v}.{n}.mp4", "span": [f"00:00:{2 * n:02d}.000", f"00:00:{2 * n + 1:02d}.500"],
                      "text": f"sentence {n} of video {v}"} for n in numbers]
            f.write(json.dumps({"video_id": f"vid{v}", "clip": clips}) + "\n")
        f.write("not json\n")
    sources = [f"hdvila:{hdvila}", f"youcook2:{ann / 'youcook2/youcookii_annotations_trainval.json'}",
               f"howto100m:{ann / 'howto100m_asr_captions/small_train_captions'}", f"subtitles:{ann / 'asr_subtitles'}"]
    argv = ["build", "--out", str(tmp_path / "out"), "--stage", "manifest", "--config", str(REPO / "pipelines/asr.yaml"),
            "--set", "manifest.val_fraction=0.2"]
    for s in sources:
        argv += ["--source", s]
    assert main(argv) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(TABLES + ("corpus.json",))
    for name, schema in zip(TABLES, (CLIPS_SCHEMA, REJECTS_SCHEMA, LONGFORM_SCHEMA)):
        assert pq.read_schema(out / name).equals(schema)
    corpus = json.loads((out / "corpus.json").read_text())
    assert list(corpus)[:4] == ["config", "lfvila_version", "inputs", "counts"]
    assert corpus["config"]["manifest"]["val_fraction"] == 0.2 and corpus["config"]["manifest"]["max_clips"] == 16
    assert [i["source"] for i in corpus["inputs"]] == sources
    assert corpus["inputs"][2]["n_files"] == 100 and len(corpus["inputs"][2]["files"]) == 100
    assert corpus["inputs"][0]["sha256"] == corpus["inputs"][0]["files"][0]["sha256"] == _digest(hdvila)
    csv = corpus["inputs"][2]["files"][0]
    assert csv["sha256"] == _digest(ann / "howto100m_asr_captions/small_train_captions" / csv["path"])
    counts = corpus["counts"]
    for src in counts["sources"].values():
        assert src["input_records"] == src["accepted_records"] + src["rejected"]
        assert src["kept_clips"] == src["clips_in_longform"] + src["merge_rejected"]
    assert counts["input_records"] == counts["accepted_records"] + counts["rejected"]
    assert counts["kept_clips"] == counts["clips_in_longform"] + counts["merge_rejected"]
    assert counts["sources"][sources[0]]["rejects_by_reason"] == {"malformed_record": 1}
    clips = pq.read_table(out / "clips.parquet")
    rejects = pq.read_table(out / "rejects.parquet")
    longform = pq.read_table(out / "longform.parquet").to_pylist()
    assert clips.num_rows == counts["kept_clips"] and rejects.num_rows == counts["rejected"] + counts["merge_rejected"]
    assert rejects.column("stage").to_pylist().count("merge") == counts["merge_rejected"] > 0
    # hdvila: odd videos leave 7-8 out (run of 2), even videos 1-3 (run of 3) and 5 (run of 1).
    assert counts["sources"][sources[0]]["merge_rejects_by_reason"] == {"run_too_short": 3 * 2 + 3 * 4}
    assert set(clips.column("source").to_pylist()) == {"hdvila", "youcook2", "howto100m", "subtitles"}
    hd = [r for r in longform if r["source"] == "hdvila"]
    # Odd videos: runs 1-5 (5 clips) and 7-8 (too short); even videos: 1-3 then 5: no run of 4.
    assert sorted(r["video_id"] for r in hd) == ["vid1", "vid3", "vid5"]
    assert all([s["clip_id"] for s in r["sentences"]] == [f"{r['video_id']}.{n}.mp4" for n in range(1, 6)] for r in hd)
    keys = [r["key"] for r in longform]
    assert len(set(keys)) == len(keys) and not any("." in k for k in keys)
    assert all(4 <= r["n_clips"] <= 16 and r["n_clips"] == len(r["sentences"]) for r in longform)
    splits = {}
    for r in longform:
        splits.setdefault((r["source"], r["video_id"]), set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values()) and {"train", "val"} <= set().union(*splits.values())
    lf_counts = counts["longform"]
    assert lf_counts["train"]["videos"] + lf_counts["val"]["videos"] == len(longform)
    # A later stage's key survives a rebuild; the tables are byte-identical.
    corpus["shards"] = {"note": "added by the shard stage"}
    (out / "corpus.json").write_text(json.dumps(corpus))
    before = {name: _digest(out / name) for name in TABLES}
    assert main(argv) == 0
    assert {name: _digest(out / name) for name in TABLES} == before
    rebuilt = json.loads((out / "corpus.json").read_text())
    assert rebuilt["shards"] == {"note": "added by the shard stage"} and rebuilt["counts"] == counts


def test_missing_input_and_bad_spec_fail_loudly(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_manifest(BuildConfig(), tmp_path / "o", [f"howto100m:{tmp_path / 'nope'}"])
    with pytest.raises(ValueError, match="unknown format"):
        build_manifest(BuildConfig(), tmp_path / "o", ["srt:x.srt"])
    with pytest.raises(ValueError, match="manifest.max_clips"):
        ManifestConfig(min_clips=4, max_clips=2)


@pytest.mark.parametrize("recipe", ["lfvila8m", "retrieval_activitynet", "asr"])
def test_recipes_load(recipe):
    cfg = load_config(BuildConfig, REPO / f"pipelines/{recipe}.yaml")
    assert cfg.manifest.min_clips >= 1


def _accounted_once(out: Path) -> None:
    """Each row of clips.parquet is in exactly one long-form video or exactly one merge reject."""
    clips = pq.read_table(out / "clips.parquet", columns=["source", "clip_id"]).to_pylist()
    in_longform = [(r["source"], s["clip_id"])
                   for r in pq.read_table(out / "longform.parquet", columns=["source", "sentences"]).to_pylist()
                   for s in r["sentences"]]
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    merged_out = [(r["source"], r["clip_id"]) for r in rejects if r["stage"] == "merge"]
    assert sorted(in_longform + merged_out) == sorted((r["source"], r["clip_id"]) for r in clips)


def test_short_runs_and_short_pieces_are_merge_rejects(tmp_path):
    meta = tmp_path / "meta.jsonl"
    numbers = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 20, 21]  # run 1-11 cut by max_clips 4 -> tail 9-11; run 20-21
    clips = [{"clip_id": f"v.{n}.mp4", "span": [f"00:00:{2 * n:02d}.000", f"00:00:{2 * n + 1:02d}.000"], "text": f"s {n}"}
             for n in numbers]
    meta.write_text(json.dumps({"video_id": "v", "clip": clips}) + "\n")
    cfg = BuildConfig()
    cfg.manifest = ManifestConfig(min_clips=4, max_clips=4)
    counts = build_manifest(cfg, tmp_path / "out", [f"hdvila:{meta}"])
    src = counts["sources"][f"hdvila:{meta}"]
    assert (src["kept_clips"], src["clips_in_longform"], src["merge_rejected"]) == (13, 8, 5)
    assert src["merge_rejects_by_reason"] == {"piece_too_short": 3, "run_too_short": 2}
    assert src["rejected"] == 0 and src["rejects_by_reason"] == {}
    rejects = pq.read_table(tmp_path / "out/rejects.parquet").to_pylist()
    assert [(r["clip_id"], r["stage"], r["reason"], r["value"]) for r in rejects] == (
        [(f"v.{n}.mp4", "merge", "piece_too_short", "3") for n in (9, 10, 11)]
        + [(f"v.{n}.mp4", "merge", "run_too_short", "2") for n in (20, 21)])
    assert rejects[-1]["detail"] == "run of 2 consecutive clips, min_clips 4"
    assert rejects[0]["line"] == 1 and rejects[0]["file"] == str(meta) and rejects[0]["video_id"] == "v"
    assert pq.read_table(tmp_path / "out/clips.parquet").num_rows == 13
    _accounted_once(tmp_path / "out")


def test_real_files_every_kept_clip_in_one_longform_video_or_one_merge_reject(shared_data, tmp_path):
    ann = shared_data / "annotations"
    sources = [f"youcook2:{ann / 'youcook2/youcookii_annotations_trainval.json'}",
               f"activitynet:{ann / 'activitynet_captions/val_1.json'}"]
    counts = build_manifest(BuildConfig(), tmp_path, sources)  # defaults: runs of >= 4 clips 3 s apart
    for name in sources:
        src = counts["sources"][name]
        assert src["input_records"] == src["kept_clips"] + src["rejected"]
        assert src["kept_clips"] == src["clips_in_longform"] + src["merge_rejected"]
        assert src["merge_rejected"] > 0 and set(src["merge_rejects_by_reason"]) == {"run_too_short"}
    assert counts["kept_clips"] == counts["clips_in_longform"] + counts["merge_rejected"]
    assert counts["invariants"] == {"input_records == accepted_records + rejected": True,
                                    "kept_clips == clips_in_longform + merge_rejected": True}
    assert all(src["invariants"] == counts["invariants"] for src in counts["sources"].values())
    _accounted_once(tmp_path)
