"""Source adapters on the real annotation files and on small hand-written files."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from lfvila.manifest.jsonstream import JsonStreamError, iter_object_items
from lfvila.manifest.records import RawVideo, Reject
from lfvila.manifest.sources import get_adapter, parse_source_spec
from lfvila.manifest.sources.subtitles import parse_cues, video_id_of


def _read(fmt: str, path: Path, options: dict | None = None) -> tuple[list[RawVideo], list[Reject], dict]:
    stats: dict = {}
    items = list(get_adapter(fmt).read(path, options or {}, None, stats))
    return ([i for i in items if isinstance(i, RawVideo)], [i for i in items if isinstance(i, Reject)], stats)


def test_source_spec_parsing(tmp_path):
    spec = parse_source_spec("hdvila:/data/meta.jsonl?text=/data/texts.tsv")
    assert spec.format == "hdvila" and spec.path == Path("/data/meta.jsonl") and spec.options == {"text": "/data/texts.tsv"}
    for bad in ("meta.jsonl", "nosuch:/x", "activitynet:", "activitynet:/x?text=y"):
        with pytest.raises(ValueError):
            parse_source_spec(bad)


def test_activitynet_real_train_file(shared_data):
    videos, rejects, _ = _read("activitynet", shared_data / "annotations/activitynet_captions/train.json")
    assert len(videos) == 10009 and not rejects
    assert sum(len(v.clips) for v in videos) == 37421
    first = videos[0]
    assert first.video_id == "v_QOlSCBRmfWY" and first.duration == 82.73
    assert first.clips[1].clip_id == "v_QOlSCBRmfWY.1" and first.clips[1].start == 17.37


def test_youcook2_real_file(shared_data):
    videos, rejects, _ = _read("youcook2", shared_data / "annotations/youcook2/youcookii_annotations_trainval.json")
    assert len(videos) == 1790 and not rejects
    assert sum(len(v.clips) for v in videos) == 13829
    durations = [v.duration for v in videos]
    assert 44 <= min(durations) and max(durations) <= 1107


def test_howto100m_real_dir_and_caption_json(shared_data, tmp_path):
    videos, rejects, _ = _read("howto100m", shared_data / "annotations/howto100m_asr_captions/small_train_captions")
    assert len(videos) == 100 and not rejects
    assert sum(len(v.clips) for v in videos) == 11173
    assert "-tCQ4tCQdWE" in {v.video_id for v in videos}  # the file name starting with "-"
    caption = tmp_path / "caption.json"
    caption.write_text(json.dumps({"vidA": {"start": [0.5, 2.0], "end": [2.0, 4.0], "text": ["hello there", "there friend"]},
                                   "vidB": {"start": [1.0], "end": [2.0, 3.0], "text": ["x"]}}))
    videos, rejects, _ = _read("howto100m", caption)
    assert [v.video_id for v in videos] == ["vidA"] and [c.text for c in videos[0].clips] == ["hello there", "there friend"]
    assert len(rejects) == 1 and rejects[0].video_id == "vidB" and rejects[0].reason == "malformed_record"


def test_howto100m_csv_rows(tmp_path):
    path = tmp_path / "vid1.csv"
    path.write_text('start,end,text\n0.5,1.5,hello world\n1.5,3.0,"with, comma"\n4.0\n3.0,4.0,unquoted, comma\n')
    videos, rejects, _ = _read("howto100m", path)
    assert [c.text for c in videos[0].clips] == ["hello world", "with, comma", "unquoted, comma"]
    assert [(r.reason, r.line) for r in rejects] == [("malformed_record", 4)]


def test_subtitles_real_files(shared_data):
    subs = shared_data / "annotations/asr_subtitles"
    videos, rejects, _ = _read("subtitles", subs)
    by_id = {v.video_id: v for v in videos}
    assert set(by_id) == {"sintel_en", "vtt-to-json_example_youtube_auto", "webvtt-py_youtube_dl"} and not rejects
    auto = by_id["vtt-to-json_example_youtube_auto"]
    assert len(auto.clips) == 515
    first = auto.clips[0]
    assert first.text == "in the wake of the Orlando" and first.word_starts == (0.0, 0.329, 0.39, 0.659, 0.719, 0.87)
    sintel = by_id["sintel_en"].clips
    assert sintel[2].text == "You're a fool for traveling alone, so completely unprepared."
    assert sintel[2].start == "00:02:28,000"


def test_vtt_tags_entities_and_missing_blank_line():
    vtt = ("WEBVTT\n\nNOTE a comment\n\n00:00:01.000 --> 00:00:02.000 align:start\n<i>Tom &amp; Jerry</i>\n"
           "00:00:02.000 --> 00:00:03.500\nrun<00:00:02.500><c> fast</c>\n\n")
    cues = parse_cues(vtt, "v")
    assert [c.text for c in cues] == ["Tom & Jerry", "run fast"]
    assert cues[1].word_starts == (2.0, 2.5) and cues[0].word_starts is None
    assert video_id_of(Path("talk-abc123.en.vtt")) == "talk-abc123"
    assert video_id_of(Path("talk-abc123.en-US.vtt")) == "talk-abc123"
    assert video_id_of(Path("sintel_en.srt")) == "sintel_en"


def test_hdvila_separate_text_file_jsonl_and_tsv(tmp_path):
    meta = tmp_path / "meta.jsonl"
    meta.write_text(json.dumps({"video_id": "V1", "clip": [
        {"clip_id": f"V1.{n}.mp4", "span": [f"00:00:0{n}.000", f"00:00:0{n}.900"]} for n in range(1, 5)]}) + "\n")
    tsv = tmp_path / "texts.tsv"
    tsv.write_text("clip_id\ttext\nV1.1.mp4\tone\nV1.2.mp4\ttwo\nbroken line\nV1.2.mp4\tagain\nV1.3.mp4\tthree\nV9.1.mp4\tnine\n")
    videos, rejects, stats = _read("hdvila", meta, {"text": str(tsv)})
    assert [c.text for c in videos[0].clips] == ["one", "two", "three", None]
    assert sorted((r.reason, r.line) for r in rejects) == [("duplicate_clip", 5), ("malformed_record", 4)]
    assert stats == {"text_rows": 4, "text_rows_used": 3, "text_rows_unused": 1}
    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text("".join(json.dumps({"clip_id": f"V1.{n}.mp4", "text": f"t{n}"}) + "\n" for n in range(1, 5)))
    videos, rejects, _ = _read("hdvila", meta, {"text": str(jsonl)})
    assert [c.text for c in videos[0].clips] == ["t1", "t2", "t3", "t4"] and not rejects


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_json_object_stream_at_any_chunk_size(chunk):
    data = {"a": {"x": [1, 2.5, "\u00e9\u00e8 multi-byte"]}, "b\u00fc": [], "c": 12345678901234567890}
    raw = json.dumps({"database": data, "other": {"skip": [1]}}, indent=1, ensure_ascii=False).encode()
    items = list(iter_object_items(io.BytesIO(raw), ("database",), chunk_bytes=chunk))
    assert [(k, v) for k, v, _ in items] == list(data.items())
    assert items[0][2] == 3  # line of the first value
    with pytest.raises(JsonStreamError):
        list(iter_object_items(io.BytesIO(b'{"a": 1, "b": [}'), chunk_bytes=chunk))
