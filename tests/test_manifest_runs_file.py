"""manifest.runs_file: the released LF-VILA-8M runs (lfvila8m_clipid.jsonl) made exactly, every clip id accounted for."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lfvila.build_config import BuildConfig
from lfvila.config import load_config
from lfvila.errors import ConfigError
from lfvila.manifest.build import build_manifest
from lfvila.manifest.runs_file import parse_line

REPO = Path(__file__).resolve().parents[1]


def _span(n: int) -> list[str]:
    return [f"00:{n // 60:02d}:{n % 60:02d}.000", f"00:{n // 60:02d}:{n % 60:02d}.900"]


def _write_metadata(path: Path, videos: dict[str, list[int]], bad: dict[str, set[int]] | None = None) -> Path:
    """HD-VILA-shaped metadata: clips <vid>.<n>.mp4 one second apart; ``bad`` clips get an inverted span."""
    bad = bad or {}
    with open(path, "w") as f:
        for video_id, numbers in videos.items():
            clips = []
            for n in numbers:
                span = _span(n)[::-1] if n in bad.get(video_id, ()) else _span(n)
                clips.append({"clip_id": f"{video_id}.{n}.mp4", "span": span, "text": f"sentence {n} of {video_id}"})
            f.write(json.dumps({"video_id": video_id, "url": f"https://www.youtube.com/watch?v={video_id}",
                                "clip": clips}) + "\n")
    return path


def _cfg(runs_file: Path | None = None, **manifest) -> BuildConfig:
    cfg = load_config(BuildConfig, REPO / "pipelines/lfvila8m.yaml")
    cfg.manifest.runs_file = None if runs_file is None else str(runs_file)
    cfg.manifest.val_fraction = 0.0
    for k, v in manifest.items():
        setattr(cfg.manifest, k, v)
    return cfg


def _longform(out: Path) -> dict[str, list[str]]:
    rows = pq.read_table(out / "longform.parquet").to_pylist()
    return {r["key"]: [s["clip_id"] for s in r["sentences"]] for r in rows}


def _rejects(out: Path, stage: str) -> list[tuple]:
    rows = pq.read_table(out / "rejects.parquet").to_pylist()
    return sorted(((r["clip_id"], r["reason"]) for r in rows if r["stage"] == stage), key=lambda t: (t[0] or "", t[1]))


def test_the_three_line_spellings():
    ids = ["aB-3.1.mp4", "aB-3.2.mp4"]
    assert parse_line(json.dumps(ids)) == ids
    assert parse_line(json.dumps([{"clip_id": i, "text": "t"} for i in ids])) == ids
    assert parse_line("aB-3.1.mp4, aB-3.2.mp4\n") == ids
    assert parse_line("aB-3.1.mp4 aB-3.2.mp4") == parse_line("aB-3.1.mp4,aB-3.2.mp4") == ids
    with pytest.raises(ValueError):
        parse_line('[{"text": "no id"}]')
    with pytest.raises(ValueError):
        parse_line("[1, 2]")


def test_runs_file_listing_the_derived_runs_gives_the_same_tables(tmp_path):
    meta = _write_metadata(tmp_path / "meta.jsonl", {"vidA": [1, 2, 3, 4, 5, 7, 8, 9, 10], "vidB": [3, 4, 5, 6],
                                                      "vidC": [1, 2, 3]})
    derived = tmp_path / "derived"
    counts = build_manifest(_cfg(), derived, [f"hdvila:{meta}"])
    runs = tmp_path / "runs.jsonl"
    runs.write_text("".join(json.dumps(ids) + "\n" for ids in _longform(derived).values()))
    released = tmp_path / "released"
    released_counts = build_manifest(_cfg(runs), released, [f"hdvila:{meta}"])
    for table in ("clips.parquet", "longform.parquet"):
        assert pq.read_table(released / table).equals(pq.read_table(derived / table)), table
    assert _longform(released) == _longform(derived)
    # vidC's three clips: a run too short when derived, named by no run when released.
    assert _rejects(derived, "merge") == [(f"vidC.{n}.mp4", "run_too_short") for n in (1, 2, 3)]
    assert _rejects(released, "merge") == [(f"vidC.{n}.mp4", "not_in_runs") for n in (1, 2, 3)]
    assert released_counts["runs_file"]["runs_listed"] == 3 and released_counts["runs_file"]["rejected"] == 0
    assert released_counts["longform"] == counts["longform"]
    assert all(released_counts["invariants"].values())


def test_every_listed_clip_id_is_placed_or_rejected_with_a_reason(tmp_path):
    meta = _write_metadata(tmp_path / "meta.jsonl",
                           {"vidA": [1, 2, 3, 4, 5, 6, 7, 8], "vidB": [1, 2, 3, 4, 5], "vidD": [1, 2]},
                           bad={"vidB": {2}, "vidD": {1, 2}})
    runs = tmp_path / "runs.txt"
    runs.write_text("\n".join([
        # 1: listed out of order, one clip missing from the metadata: 4 kept, in clip-number order
        "vidA.3.mp4 vidA.1.mp4 vidA.2.mp4 vidA.4.mp4 vidA.99.mp4",
        # 2: a clip of another video, a repeat of line 1's clip: 4 kept
        '["vidA.5.mp4", "vidA.6.mp4", "vidB.1.mp4", "vidA.7.mp4", "vidA.8.mp4", "vidA.1.mp4"]',
        # 3: one clip rejected by validation (inverted span) leaves 3 < min_clips 4: a merge reject
        '[{"clip_id": "vidB.1.mp4"}, {"clip_id": "vidB.2.mp4"}, {"clip_id": "vidB.3.mp4"}, {"clip_id": "vidB.4.mp4"}]',
        "",
        "not json [",  # 5: no clip id of the release's form: malformed
        "vidZ.1.mp4,vidZ.2.mp4,vidZ.3.mp4,vidZ.4.mp4",  # 6: a video the metadata does not have
        "vidD.1.mp4 vidD.2.mp4 vidD.3.mp4 vidD.4.mp4",  # 7: all its clips rejected or missing
    ]) + "\n")
    out = tmp_path / "out"
    counts = build_manifest(_cfg(runs), out, [f"hdvila:{meta}"])
    assert _longform(out) == {"hdvila~vidA~000001": [f"vidA.{n}.mp4" for n in (1, 2, 3, 4)],
                              "hdvila~vidA~000005": [f"vidA.{n}.mp4" for n in (5, 6, 7, 8)]}
    assert _rejects(out, "runs") == sorted(
        [("vidA.99.mp4", "run_clip_missing"), ("vidB.1.mp4", "run_clip_other_video"),
         ("vidA.1.mp4", "run_clip_duplicate"), ("vidB.2.mp4", "run_clip_rejected"), (None, "malformed_record")]
        + [(f"vidZ.{n}.mp4", "run_clip_missing") for n in (1, 2, 3, 4)]
        + [("vidD.1.mp4", "run_clip_rejected"), ("vidD.2.mp4", "run_clip_rejected"),
           ("vidD.3.mp4", "run_clip_missing"), ("vidD.4.mp4", "run_clip_missing")],
        key=lambda t: (t[0] or "", t[1]))
    # vidB: 1, 3, 4 were in a run left with 3 clips; 5 is in no run.
    assert _rejects(out, "merge") == [("vidB.1.mp4", "run_too_short"), ("vidB.3.mp4", "run_too_short"),
                                      ("vidB.4.mp4", "run_too_short"), ("vidB.5.mp4", "not_in_runs")]
    rf = counts["runs_file"]
    assert rf["runs_listed"] == 5 and rf["rejected"] == 13
    assert rf["rejects_by_reason"] == {"malformed_record": 1, "run_clip_missing": 7, "run_clip_rejected": 3,
                                       "run_clip_other_video": 1, "run_clip_duplicate": 1}
    assert all(counts["invariants"].values())
    assert counts["kept_clips"] == counts["clips_in_longform"] + counts["merge_rejected"] == 8 + 4
    assert pq.read_metadata(out / "rejects.parquet").num_rows == counts["rejected"] + counts["merge_rejected"] + 13
    malformed = [r for r in pq.read_table(out / "rejects.parquet").to_pylist() if r["reason"] == "malformed_record"]
    assert malformed[0]["line"] == 5 and "line 5" in malformed[0]["detail"]


def test_columnar_fast_path_and_per_record_path_agree(tmp_path):
    # A clean video goes through the fast path's reader; an unclean one (a bad span) through the per-record one.
    meta = _write_metadata(tmp_path / "meta.jsonl", {"vidA": list(range(1, 11)), "vidB": list(range(1, 7))},
                           bad={"vidB": {6}})
    runs = tmp_path / "runs.jsonl"
    runs.write_text('["vidA.2.mp4","vidA.3.mp4","vidA.4.mp4","vidA.5.mp4","vidA.6.mp4"]\n'
                    '["vidB.1.mp4","vidB.2.mp4","vidB.3.mp4","vidB.4.mp4","vidB.5.mp4","vidB.6.mp4"]\n')
    out = tmp_path / "out"
    build_manifest(_cfg(runs), out, [f"hdvila:{meta}"])
    assert _longform(out) == {"hdvila~vidA~000002": [f"vidA.{n}.mp4" for n in range(2, 7)],
                              "hdvila~vidB~000001": [f"vidB.{n}.mp4" for n in range(1, 6)]}
    assert _rejects(out, "merge") == [(f"vidA.{n}.mp4", "not_in_runs") for n in (1, 10, 7, 8, 9)]
    assert _rejects(out, "runs") == [("vidB.6.mp4", "run_clip_rejected")]


def test_released_runs_are_cut_by_max_clips_like_derived_ones(tmp_path):
    meta = _write_metadata(tmp_path / "meta.jsonl", {"vidA": list(range(1, 11))})
    runs = tmp_path / "runs.jsonl"
    runs.write_text(json.dumps([f"vidA.{n}.mp4" for n in range(1, 11)]) + "\n")
    out = tmp_path / "out"
    build_manifest(_cfg(runs, max_clips=4), out, [f"hdvila:{meta}"])
    assert list(_longform(out)) == ["hdvila~vidA~000001", "hdvila~vidA~000005"]
    assert _rejects(out, "merge") == [("vidA.10.mp4", "piece_too_short"), ("vidA.9.mp4", "piece_too_short")]


def test_runs_file_needs_an_hdvila_source_and_an_existing_file(tmp_path, shared_data):
    anet = shared_data / "annotations/activitynet_captions/val_1.json"
    runs = tmp_path / "runs.jsonl"
    runs.write_text('["a.1.mp4"]\n')
    with pytest.raises(ConfigError, match="hdvila"):
        build_manifest(_cfg(runs), tmp_path / "out", [f"activitynet:{anet}"])
    meta = _write_metadata(tmp_path / "meta.jsonl", {"vidA": [1, 2, 3, 4]})
    with pytest.raises(FileNotFoundError, match="runs_file"):
        build_manifest(_cfg(tmp_path / "nope.jsonl"), tmp_path / "out2", [f"hdvila:{meta}"])


def test_cli_set_runs_file_and_released_recipe(tmp_path):
    meta = _write_metadata(tmp_path / "meta.jsonl", {"vidA": [1, 2, 3, 4, 5, 6]})
    runs = tmp_path / "lfvila8m_clipid.jsonl"
    runs.write_text(json.dumps([f"vidA.{n}.mp4" for n in (2, 3, 4, 5)]) + "\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "lfvila.cli", "build", "--out", str(out), "--source", f"hdvila:{meta}",
         "--config", str(REPO / "pipelines/lfvila8m_released.yaml"), "--set", f"manifest.runs_file={runs}",
         "--stage", "manifest"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    corpus = json.loads((out / "corpus.json").read_text())
    assert corpus["config"]["manifest"]["runs_file"] == str(runs)
    assert corpus["counts"]["runs_file"]["sha256"] and corpus["counts"]["runs_file"]["runs_listed"] == 1
    assert [r["key"] for r in pq.read_table(out / "longform.parquet").to_pylist()] == ["hdvila~vidA~000002"]


def test_a_missing_runs_file_leaves_nothing_in_out(tmp_path):
    meta = _write_metadata(tmp_path / "meta.jsonl", {"vidA": [1, 2, 3, 4]})
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="runs_file"):
        build_manifest(_cfg(tmp_path / "nope.jsonl"), out, [f"hdvila:{meta}"])
    assert list(out.iterdir()) == []  # no half-written .tmp tables


def _hms(t: float) -> str:
    ms = round(t * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def test_real_captions_listed_derived_runs_in_all_three_spellings(shared_data, tmp_path):
    """HD-VILA-shaped metadata from real ActivityNet captions (text, times): every third video loses
    clip 3, so it has two runs or short ones; the derived runs, written back in the three spellings
    with their ids reversed, rebuild the same tables, and every listed id is placed."""
    ann = json.loads((shared_data / "annotations/activitynet_captions/train.json").read_text())
    meta = tmp_path / "hdvila.jsonl"
    with open(meta, "w") as f:
        for v, (video_id, a) in enumerate(list(ann.items())[:300]):
            clips = [{"clip_id": f"{video_id}.{n}.mp4", "span": [_hms(s), _hms(e)], "text": text.strip()}
                     for n, ((s, e), text) in enumerate(zip(a["timestamps"], a["sentences"]), 1)
                     if not (v % 3 == 0 and n == 3)]
            f.write(json.dumps({"video_id": video_id, "url": f"https://www.youtube.com/watch?v={video_id[2:]}",
                                "clip": clips}) + "\n")
    derived = build_manifest(_cfg(), tmp_path / "derived", [f"hdvila:{meta}"])
    rows = pq.read_table(tmp_path / "derived/longform.parquet").to_pylist()
    assert len(rows) > 50 and derived["merge_rejects_by_reason"]["run_too_short"] > 0
    runs = tmp_path / "runs.jsonl"
    with open(runs, "w") as f:
        for i, row in enumerate(rows):
            ids = [s["clip_id"] for s in row["sentences"]][::-1]
            f.write([json.dumps(ids), json.dumps([{"clip_id": c} for c in ids]), ", ".join(ids)][i % 3] + "\n")
    released = build_manifest(_cfg(runs), tmp_path / "released", [f"hdvila:{meta}"])
    for table in ("clips.parquet", "longform.parquet"):
        assert (tmp_path / "derived" / table).read_bytes() == (tmp_path / "released" / table).read_bytes(), table
    assert released["merge_rejects_by_reason"] == {"not_in_runs": derived["merge_rejects_by_reason"]["run_too_short"]}
    rf = released["runs_file"]
    assert rf["runs_listed"] == len(rows) and rf["rejected"] == 0
    assert rf["clip_ids_listed"] == rf["clip_ids_placed"] == released["clips_in_longform"]
    assert released["invariants"]["runs_file: clip_ids_listed == clip_ids_placed + rejected clip ids"]


def test_listed_clip_ids_identity_with_rejects(tmp_path):
    meta = _write_metadata(tmp_path / "meta.jsonl", {"vidA": [1, 2, 3, 4, 5], "vidB": [1, 2, 3, 4]},
                           bad={"vidB": {2}})
    runs = tmp_path / "runs.jsonl"
    runs.write_text('["vidA.1.mp4", "vidA.2.mp4", "vidA.3.mp4", "vidA.4.mp4", "vidA.9.mp4", "vidB.1.mp4"]\n'
                    "vidB.1.mp4 vidB.2.mp4 vidB.3.mp4 vidB.4.mp4 vidB.3.mp4\n"
                    "[oops\n"
                    '["vidZ.1.mp4", "vidZ.2.mp4"]\n')
    counts = build_manifest(_cfg(runs), tmp_path / "out", [f"hdvila:{meta}"])
    rf = counts["runs_file"]
    assert rf["clip_ids_listed"] == 6 + 5 + 2 and rf["clip_ids_placed"] == 4 + 3
    assert rf["rejects_by_reason"] == {"malformed_record": 1, "run_clip_missing": 1 + 2, "run_clip_rejected": 1,
                                       "run_clip_other_video": 1, "run_clip_duplicate": 1}
    assert rf["clip_ids_listed"] == rf["clip_ids_placed"] + rf["rejected"] - 1
    assert all(counts["invariants"].values()) and len(counts["invariants"]) == 3
