"""hdvila ``?subtitles=DIR``: clip text rebuilt from real YouTube caption tracks (spans only in the metadata)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lfvila.cli import main
from lfvila.manifest.sources import parse_source_spec
from lfvila.manifest.sources.hdvila import assign_words, read_batches

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "annotations" / "asr_subtitles"
AUTO = DATA / "vtt-to-json_example_youtube_auto.en.vtt"  # per-word <c> timing tags, rolling lines
PLAIN = DATA / "webvtt-py_youtube_dl.vtt"  # no word timing: interpolated inside cues

_spec = importlib.util.spec_from_file_location("subtitle_clip_text", Path(__file__).resolve().parents[1] / "bench"
                                               / "subtitle_clip_text.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _build(tmp_path: Path, meta: Path, option: str, exit_code: int = 0, name: str = "corpus") -> tuple[list, list, dict]:
    out = tmp_path / name
    # min_clips 1: these few clips are about text, not about runs (the CLI exits 2 without a long-form video).
    assert main(["build", "--out", str(out), "--source", f"hdvila:{meta}?{option}", "--stage", "manifest",
                 "--set", "manifest.min_clips=1"]) == exit_code
    return (pq.read_table(out / "clips.parquet").to_pylist(), pq.read_table(out / "rejects.parquet").to_pylist(),
            json.loads((out / "corpus.json").read_text())["counts"])


@pytest.mark.parametrize("track", [AUTO, PLAIN], ids=["youtube_auto", "youtube_dl_plain"])
def test_sentence_spans_get_their_own_words_once(tmp_path, track):
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "vid_A.en.vtt").write_bytes(track.read_bytes())
    sentences = bench.sentence_truth(subs / "vid_A.en.vtt", "vid_A")
    assert len(sentences) >= 2
    meta = tmp_path / "meta.jsonl"
    meta.write_text(json.dumps(bench.metadata_line("vid_A", sentences)) + "\n")
    clips, rejects, counts = _build(tmp_path, meta, f"subtitles={subs}")
    assert [r for r in rejects if r["stage"] != "merge"] == []
    built = {c["clip_id"]: c["text"] for c in clips}
    assert list(built) == [f"vid_A.{k}.mp4" for k in range(1, len(sentences) + 1)]
    result = bench.score([s.text.split() for s in sentences], [t.split() for t in built.values()])
    assert result["duplicated_words"] == 0 and result["lost_words"] == 0
    assert result["right_clip_rate"] >= 0.99
    # Rolling duplication is gone: no clip repeats the previous clip's last three words at its start.
    texts = list(built.values())
    for a, b in zip(texts, texts[1:]):
        assert a.split()[-3:] != b.split()[:3]
    src = counts["sources"][next(iter(counts["sources"]))]
    assert src["subtitle_tracks"] == 1 and src["subtitle_words_in_clips"] == result["truth_words"]


def test_no_subtitles_empty_text_and_text_file_wins(tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "has_subs.en-US.vtt").write_bytes(AUTO.read_bytes())
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"clip_id": "has_subs.1.mp4", "text": "given text one"}) + "\n"
                     + json.dumps({"clip_id": "no_subs.2.mp4", "text": "given text two"}) + "\n")
    meta = tmp_path / "meta.jsonl"
    meta.write_text("\n".join(json.dumps(v) for v in [
        {"video_id": "has_subs", "clip": [
            {"clip_id": "has_subs.1.mp4", "span": ["00:00:00.000", "00:00:05.000"]},  # ?text wins
            {"clip_id": "has_subs.2.mp4", "span": ["00:00:05.000", "00:00:10.000"]},
            {"clip_id": "has_subs.3.mp4", "span": ["00:59:00.000", "00:59:05.000"]},  # after the track: empty_text
        ]},
        {"video_id": "no_subs", "clip": [
            {"clip_id": "no_subs.1.mp4", "span": ["00:00:00.000", "00:00:05.000"]},  # no_subtitles
            {"clip_id": "no_subs.2.mp4", "span": ["00:00:05.000", "00:00:10.000"]},  # text from the file
        ]},
    ]) + "\n")
    clips, rejects, counts = _build(tmp_path, meta, f"subtitles={subs}&lang=en,en-US&text={texts}")
    text_of = {c["clip_id"]: c["text"] for c in clips}
    assert text_of["has_subs.1.mp4"] == "given text one"
    assert text_of["no_subs.2.mp4"] == "given text two"
    # Clip 2 holds the words whose start is in [5 s, 10 s], read off the track's tags by hand:
    # violence <00:00:05.009> ... Chris (cue at 00:00:06.060) ... Republicans (cue at 00:00:09.809).
    assert text_of["has_subs.2.mp4"] == ("violence Senator Chris Murphy is nearly 15 hour filibuster last week "
                                         "prompting Republicans")
    reasons = {(r["clip_id"], r["stage"], r["reason"]) for r in rejects if r["stage"] != "merge"}
    assert reasons == {("has_subs.3.mp4", "validate", "empty_text"), ("no_subs.1.mp4", "text", "no_subtitles")}
    assert counts["rejects_by_reason"] == {"empty_text": 1, "no_subtitles": 1}
    assert counts["input_records"] == 5 == counts["accepted_records"] + counts["rejected"]


def test_language_preference_and_no_track_for_other_language(tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "v1.de.vtt").write_bytes(PLAIN.read_bytes())
    meta = tmp_path / "meta.jsonl"
    meta.write_text(json.dumps({"video_id": "v1", "clip": [
        {"clip_id": "v1.1.mp4", "span": ["00:04:46.000", "00:05:10.000"]}]}) + "\n")
    _, rejects, _ = _build(tmp_path, meta, f"subtitles={subs}", exit_code=2)  # every record rejected
    assert [r["reason"] for r in rejects if r["stage"] != "merge"] == ["no_subtitles"]
    clips, rejects, _ = _build(tmp_path, meta, f"subtitles={subs}&lang=de", name="corpus_de")
    assert clips[0]["text"].split()[0] == "yeah" and not [r for r in rejects if r["stage"] != "merge"]


def test_unsafe_video_id_is_never_a_path(tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    (tmp_path / "escape.en.vtt").write_bytes(PLAIN.read_bytes())  # would be found through "../escape"
    meta = tmp_path / "meta.jsonl"
    meta.write_text(json.dumps({"video_id": "../escape", "clip": [
        {"clip_id": "../escape.1.mp4", "span": ["00:04:46.000", "00:05:10.000"]}]}) + "\n")
    _, rejects, counts = _build(tmp_path, meta, f"subtitles={subs}", exit_code=2)
    assert [r["reason"] for r in rejects] == ["unsafe_id"]
    assert next(iter(counts["sources"].values()))["subtitle_tracks"] == 0  # the file outside DIR was not read


def test_assign_words_each_word_in_at_most_one_clip():
    # Shared boundary -> the clip starting there; overlap -> the later clip; gap -> no clip; bad span -> none.
    spans = [(0.0, 2.0), (2.0, 4.0), (3.5, 6.0), None, (8.0, 9.0)]
    got = assign_words([0.0, 1.9, 2.0, 3.6, 6.5, 8.0, 9.0, 9.5], spans)
    assert got == [[0, 1], [2], [3], [], [5, 6]]


def test_subtitles_go_through_the_per_record_path(tmp_path):
    meta = tmp_path / "meta.jsonl"
    meta.write_text(json.dumps({"video_id": "v", "clip": [
        {"clip_id": "v.1.mp4", "span": ["00:00:00.000", "00:00:01.000"], "text": "plain text"}]}) + "\n")
    spec = parse_source_spec(f"hdvila:{meta}?subtitles={tmp_path}")
    items = list(read_batches(spec.path, spec.options, None, {}))
    assert [type(i).__name__ for i in items] == ["RawVideo"]
