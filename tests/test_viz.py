"""inspect / preview / report on a small corpus in the contract layout, through the real CLI."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lfvila.cli import main
from lfvila.testing import write_synthetic_shards
from lfvila.viz.corpus import read_sample, read_sample_at
from lfvila.viz.preview import chosen_frames, frame_sentences
from lfvila.viz.summary import summarize


def _index_rows(tar_path: Path, split: str) -> list[dict]:
    """Index rows (key, offset of the first header, size up to the end of the last member) of a tar."""
    rows: dict[str, dict] = {}
    with tarfile.open(tar_path) as tar:
        for info in tar.getmembers():
            key = info.name.split(".", 1)[0]
            end = info.offset_data + (info.size + 511) // 512 * 512
            row = rows.setdefault(key, {"key": key, "split": split, "shard": tar_path.name, "offset": info.offset})
            row["size"] = end - row["offset"]
            if info.name.endswith(".json"):
                meta = json.loads(tar.extractfile(info).read())
                row.update(n_frames=len(meta["frame_times"]), duration=meta["end"] - meta["start"],
                           n_sentences=len(meta["sentences"]))
    return list(rows.values())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A corpus in the contract layout: 6 train + 3 val samples, manifest tables, one failed sample."""
    root = tmp_path_factory.mktemp("corpus")
    shards = root / "shards"
    tars = write_synthetic_shards(shards, n_samples=6, samples_per_shard=4, split="train", seed=1)
    tars += write_synthetic_shards(shards, n_samples=3, samples_per_shard=4, split="val", seed=2)
    index = [row for t in tars for row in _index_rows(Path(t), Path(t).name.split("-")[0])]
    pq.write_table(pa.Table.from_pylist(index), shards / "index.parquet")
    longform = []
    for t in tars:
        with tarfile.open(t) as tar:
            for info in tar.getmembers():
                if info.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(info).read())
                    longform.append({"key": meta["key"], "split": meta["key"].split("_")[0], "source": "synthetic",
                                     "video_id": meta["video_id"], "start": meta["start"], "end": meta["end"],
                                     "n_clips": len(meta["sentences"]),
                                     "sentences": [{k: s[k] for k in ("clip_id", "start", "end", "text")}
                                                   for s in meta["sentences"]]})
    longform.append({**longform[0], "key": "train_broken", "video_id": "broken"})
    pq.write_table(pa.Table.from_pylist(longform), root / "longform.parquet")
    pq.write_table(pa.Table.from_pylist([
        {"source": "hdvila", "video_id": "v", "clip_id": "v.1.mp4", "stage": "validate", "reason": "empty_text",
         "detail": "", "value": "", "file": "meta.jsonl", "line": 3},
        {"source": "hdvila", "video_id": "v", "clip_id": "v.2.mp4", "stage": "validate", "reason": "empty_text",
         "detail": "", "value": "", "file": "meta.jsonl", "line": 3},
        {"source": "hdvila", "video_id": "w", "clip_id": "w.1.mp4", "stage": "validate",
         "reason": "duplicate_clip", "detail": "", "value": "w.1.mp4", "file": "meta.jsonl", "line": 4},
    ]), root / "rejects.parquet")
    pq.write_table(pa.Table.from_pylist(
        [{"key": r["key"], "status": "ok", "reason": None} for r in index if r["split"] == "train"]
        + [{"key": "train_broken", "status": "failed", "reason": "missing_video"}]),
        shards / "train-000000.status.parquet")
    # The recorded val total is wrong on purpose: inspect must notice.
    video = {"splits": {"train": {"samples_written": 6}, "val": {"samples_written": 4}},
             "clips_check": "input clips 1 == 1 + 0", "clips_check_ok": True}
    (root / "corpus.json").write_text(json.dumps({"lfvila_version": "0.1.0", "counts": {"input_records": 40},
                                                  "video": video}))
    return root


def test_summary_counts_match_the_files(corpus):
    s = summarize(corpus)
    index = pq.read_table(corpus / "shards" / "index.parquet").to_pylist()
    train, val = s.splits["train"], s.splits["val"]
    assert (train.samples, val.samples) == (6, 3)
    assert (train.longform_videos, val.longform_videos) == (7, 3)
    assert (train.shards, val.shards) == (2, 1)
    assert train.bytes == sum(p.stat().st_size for p in (corpus / "shards").glob("train-*.tar"))
    assert train.frames == sum(r["n_frames"] for r in index if r["split"] == "train")
    assert train.hours == pytest.approx(sum(r["duration"] for r in index if r["split"] == "train") / 3600)
    assert train.failed == {"missing_video": 1} and val.failed == {}
    assert s.manifest_rejects == {"empty_text": 2, "duplicate_clip": 1}
    assert s.input_records == 40
    assert s.disagreements == ["val.samples: corpus.json says 4, the files say 3"]
    assert s.clips_check.startswith("OK: ")


def test_inspect_cli(corpus, capsys):
    assert main(["inspect", str(corpus)]) == 0
    text = capsys.readouterr().out
    assert "empty_text" in text and "missing_video" in text and "train" in text and "val" in text
    assert main(["inspect", str(corpus), "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert parsed["splits"]["val"]["samples"] == 3
    assert main(["inspect", str(corpus / "nope")]) == 2
    assert "lfvila inspect: error: " in capsys.readouterr().err


def test_read_sample_by_offset_and_by_scan(corpus, tmp_path):
    meta, frames = read_sample(corpus, "train_000005")
    assert meta["key"] == "train_000005" and len(frames) == len(meta["frame_times"])
    assert all(f[:2] == b"\xff\xd8" for f in frames)
    # The index's byte range alone holds the whole sample; a range cut short does not.
    row = next(r for r in pq.read_table(corpus / "shards" / "index.parquet").to_pylist() if r["key"] == "train_000005")
    tar = corpus / "shards" / row["shard"]
    assert read_sample_at(tar, row["offset"], row["size"], "train_000005") == (meta, frames)
    assert read_sample_at(tar, row["offset"], row["size"] - 1024, "train_000005") is None
    # A corpus without an index (shards still being written) is scanned instead.
    (tmp_path / "shards").mkdir()
    for tar in (corpus / "shards").glob("*.tar"):
        (tmp_path / "shards" / tar.name).write_bytes(tar.read_bytes())
    assert read_sample(tmp_path, "train_000005")[0] == meta
    with pytest.raises(KeyError):
        read_sample(corpus, "train_999999")


def test_frame_sentences_and_frame_choice():
    meta = {"frame_times": [0.1 * i for i in range(7)],
            "sentences": [{"frame_start": 0, "frame_end": 2}, {"frame_start": 3, "frame_end": 6}]}
    assert frame_sentences(meta) == [0, 0, None, 1, 1, 1, None]
    assert chosen_frames(5, 10) == [0, 1, 2, 3, 4]
    picked = chosen_frames(100, 10)
    assert len(picked) == 10 and picked[0] == 0 and picked[-1] == 99


def test_preview_cli_draws_the_sheet(corpus, tmp_path, capsys):
    out = tmp_path / "sheet.png"
    assert main(["preview", str(corpus), "--key", "val_000001", "-o", str(out)]) == 0
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape[0] > 200 and image.shape[1] > 800
    # The sheet shows the frames: their colours (the synthetic sample's sentence colours) appear in it.
    meta, frames = read_sample(corpus, "val_000001")
    first = np.asarray(Image.open(io.BytesIO(frames[0])).convert("RGB")).reshape(-1, 3).mean(0)
    assert (np.abs(image.reshape(-1, 3).astype(float) - first).max(1) < 25).sum() > 500
    assert main(["preview", str(corpus), "--key", "nope", "-o", str(out)]) == 2
    assert "lfvila preview: error: nope is not a key of" in capsys.readouterr().err


def test_report_cli_writes_plots_and_markdown(corpus, tmp_path):
    assert main(["report", str(corpus), "-o", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    for name in ("durations.png", "sentences_per_video.png", "words_per_sentence.png", "rejects.png"):
        assert Image.open(tmp_path / "r" / name).size[0] > 300
        assert name in md
    assert "missing_video" in md and "duplicate_clip" in md
    # words per sentence: "the screen is <colour> now" has 5 words, so every quantile is 5.
    row = next(line for line in md.splitlines() if line.startswith("| words per sentence | train"))
    assert row.split("|")[4].strip() == "5.00"


def test_demo_sample_built_for_real_then_inspected(tmp_path, capsys):
    """Render part of the demo sample, run the real ``lfvila build``, and check what the viz commands see."""
    from lfvila.sample import render_demo_videos

    # The first 12 videos hold two quirks: an unlisted clip splitting a run in two (video 3) and
    # a split leaving a run too short to keep (video 11).
    rendered = render_demo_videos(tmp_path / "sample", limit=12, workers=2)
    corpus = tmp_path / "corpus"
    assert main(["build", "--out", str(corpus), "--source", rendered.sources[0], "--videos", str(rendered.videos_dir),
                 "--set", "manifest.val_fraction=0.3", "--set", "video.frame_height=60",
                 "--set", "shards.samples_per_shard=4", "--workers", "2"]) == 0
    summary = summarize(corpus)
    index = pq.read_table(corpus / "shards" / "index.parquet").to_pylist()
    # 12 videos, one split in two, one short run dropped: 13 long-form videos, all written.
    assert sum(s.longform_videos for s in summary.splits.values()) == 13
    assert sum(s.samples for s in summary.splits.values()) == len(index) == 13
    assert sum(s.shards for s in summary.splits.values()) == len({r["shard"] for r in index}) >= 4
    assert summary.disagreements == [] and summary.clips_check.startswith("OK: ")
    assert main(["inspect", str(corpus)]) == 0
    assert "kept clips in no long-form video (runs shorter than the minimum): 2" in capsys.readouterr().out

    # Every sample is readable from its index byte range alone.
    for row in index:
        assert read_sample_at(corpus / "shards" / row["shard"], row["offset"], row["size"], row["key"]) is not None
    # The preview's frames are the ones the sentences describe: each sentence's frames show its colour.
    from lfvila.sample import COLOURS
    for row in index[:3]:
        meta, frames = read_sample(corpus, row["key"])
        for sentence in meta["sentences"]:
            colour = next(c for c in COLOURS if f" {c} " in f" {sentence['text'].rstrip('.')} ")
            expected = np.array([int(COLOURS[colour], 16) >> s & 255 for s in (16, 8, 0)])
            for i in range(sentence["frame_start"], sentence["frame_end"]):
                pixel = np.asarray(Image.open(io.BytesIO(frames[i])).convert("RGB"))[1:4, 1:4].reshape(-1, 3).mean(0)
                assert np.abs(pixel - expected).max() < 30, (row["key"], i, sentence["text"])
    sheet = tmp_path / "sheet.png"
    assert main(["preview", str(corpus), "--key", index[0]["key"], "-o", str(sheet)]) == 0
    assert Image.open(sheet).size[0] > 800
    assert main(["report", str(corpus)]) == 0
    assert "| words per sentence | train |" in (corpus / "report" / "report.md").read_text()
