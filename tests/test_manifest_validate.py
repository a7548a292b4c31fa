"""Validation: every reject reason from small hand-written files, text normalisation, accounting."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lfvila.build_config import BuildConfig
from lfvila.manifest.build import build_manifest
from lfvila.manifest.config import ManifestConfig
from lfvila.manifest.records import (
    NO_RECORDS, NO_SUBTITLES, NOT_IN_SPLIT, REJECT_REASONS, TOO_DEEP, TOO_LARGE, clean_text, parse_time,
    unsafe_id_reason,
)


def _clip(vid, n, start="00:00:01.000", end="00:00:05.000", text="a sentence"):
    return {"clip_id": f"{vid}.{n}.mp4", "span": [start, end], "text": text}


def _write_jsonl(path: Path, lines: list) -> Path:
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode())
    return path


def _build(tmp_path: Path, sources: list[str], **manifest) -> tuple[list[dict], list[dict], dict]:
    cfg = BuildConfig(manifest=ManifestConfig(**manifest))
    out = tmp_path / "out"
    build_manifest(cfg, out, sources)
    corpus = json.loads((out / "corpus.json").read_text())
    return (pq.read_table(out / "clips.parquet").to_pylist(), pq.read_table(out / "rejects.parquet").to_pylist(),
            corpus)


def test_every_reject_reason_from_hdvila_lines(tmp_path):
    good = [_clip("good", n, f"00:00:{10 * n:02d}.000", f"00:00:{10 * n + 5:02d}.000", f"sentence {n}") for n in range(1, 5)]
    meta = _write_jsonl(tmp_path / "meta.jsonl", [
        {"video_id": "good", "clip": good},
        b'{"video_id": "broken", "clip": [\n',  # line 2: malformed JSON
        {"video_id": "v1", "clip": [
            _clip("v1", 1, start="00:00:xx.000"),  # bad_timestamp
            _clip("v1", 2, start=-3.0),  # negative_time
            _clip("v1", 3, "00:00:05.000", "00:00:05.000"),  # end_not_after_start (zero length)
            _clip("v1", 4, "00:00:09.000", "00:00:05.000"),  # end_not_after_start (inverted)
            _clip("v1", 5, text=" \t\x07 "),  # empty_text after normalisation
            _clip("v1", 6),  # kept
            _clip("v1", 6, text="other"),  # duplicate clip id
            _clip("v1", 7),  # same start, end, text as clip 6: duplicate
            {"clip_id": "v1.8.mp4"},  # malformed clip entry (no span)
            {"clip_id": "v1.x.mp4", "span": ["00:00:01.000", "00:00:02.000"]},  # clip id not <vid>.<n>.mp4
            {"clip_id": "v1.9.mp4", "span": ["00:00:01.000", "00:00:02.000"]},  # no text -> empty_text
            _clip("v1", 10, "00:01:00.000", "00:01:05.000", "beyond"),  # beyond_duration (duration 30)
            _clip("v1", 11, "00:00:20.000", "00:00:30.005", "clamped"),  # within tolerance: clamped
        ], "duration": 30.0},
        {"video_id": "../evil", "clip": [_clip("../evil", 1)]},  # unsafe_id
        {"video_id": "good", "clip": [_clip("good", 9)]},  # duplicate video id
        b'{"video_id": "bad\xff\xfeutf8", "clip": [{"clip_id": "bad\xff\xfeutf8.1.mp4", "span": ["00:00:01.000", "00:00:02.000"], "text": "x"}]}\n',
        {"video_id": "v2", "clip": [_clip("v2", 1, text="caf\u00e9 \udcff")]},  # lone surrogate: invalid UTF-8
        b'{"video_id": "x\xff", broken\n',  # malformed and not UTF-8: the reject shows U+FFFD
    ])
    clips, rejects, corpus = _build(tmp_path, [f"hdvila:{meta}"], duration_tolerance_s=0.01)
    reasons = sorted(r["reason"] for r in rejects if r["stage"] != "merge")
    # no_subtitles: tests/test_manifest_subtitle_text.py; the caps' reasons: tests/test_manifest_hardening.py;
    # not_in_split: tests/test_manifest_retrieval_sources.py
    assert set(reasons) == set(REJECT_REASONS) - {NO_SUBTITLES, TOO_LARGE, TOO_DEEP, NO_RECORDS, NOT_IN_SPLIT}
    # The kept clips v1.6 and v1.11 are not adjacent: each is a run of 1, left out by the merge.
    assert sorted((r["clip_id"], r["reason"]) for r in rejects if r["stage"] == "merge") == [
        ("v1.11.mp4", "run_too_short"), ("v1.6.mp4", "run_too_short")]
    by_reason = {r: reasons.count(r) for r in set(reasons)}
    assert by_reason == {"malformed_record": 4, "bad_timestamp": 1, "negative_time": 1, "end_not_after_start": 2,
                         "empty_text": 2, "duplicate_clip": 3, "beyond_duration": 1, "unsafe_id": 1, "invalid_utf8": 2}
    malformed_lines = [r for r in rejects if r["reason"] == "malformed_record" and r["video_id"] is None]
    assert [r["line"] for r in malformed_lines] == [2, 8] and malformed_lines[0]["detail"].startswith("line 2:")
    assert "\ufffd" in malformed_lines[1]["value"]
    kept = {c["clip_id"]: c for c in clips}
    assert set(kept) == {f"good.{n}.mp4" for n in range(1, 5)} | {"v1.6.mp4", "v1.11.mp4"}
    assert kept["v1.11.mp4"]["end"] == 30.0 and kept["v1.11.mp4"]["clamped"]
    counts = corpus["counts"]["sources"][f"hdvila:{meta}"]
    assert counts["input_records"] == counts["accepted_records"] + counts["rejected"] == 1 + 4 + 13 + 1 + 1 + 1 + 1 + 1
    assert counts["clamped"] == 1 and counts["kept_clips"] == len(clips) == 6


def test_text_is_nfc_and_control_free():
    assert clean_text("Cafe\u0301\u0007  bar\n") == "Caf\u00e9 bar"
    assert clean_text("plain text") == "plain text"
    assert clean_text("\x00\x1f") == ""


def test_parse_time_forms():
    assert parse_time("00:01:02.500") == 62.5
    assert parse_time("00:01:02,500") == 62.5
    assert parse_time("1:02.5") == 62.5
    assert parse_time(3) == 3.0
    for bad in ("nan", "inf", "12:xx", None, True, [1]):
        with pytest.raises(ValueError):
            parse_time(bad)


@pytest.mark.parametrize("value,safe", [("QMi8x8o55Ns", True), ("-tCQ4tCQdWE", True), ("v_a.1.mp4", True),
                                        ("a/b", False), ("a\\b", False), ("..", False), ("x..y", False),
                                        ("a\x00b", False), ("", False), ("x" * 201, False), (" a", False),
                                        ("caf\u00e9 talk", True)])
def test_unsafe_ids(value, safe):
    assert (unsafe_id_reason(value, 200) is None) == safe


def test_activitynet_style_tolerance_and_float_noise(tmp_path):
    data = {"v_a": {"duration": 10.0, "timestamps": [[0, 4], [3, 10.005], [5, 10.0000000001], [6, 10.02]],
                    "sentences": ["One.", "Two.", "Three.", "Four."]}}
    path = tmp_path / "anet.json"
    path.write_text(json.dumps(data))
    clips, rejects, corpus = _build(tmp_path, [f"activitynet:{path}"], min_clips=1)
    assert [c["end"] for c in clips] == [4.0, 10.0, 10.0]
    assert [c["clamped"] for c in clips] == [False, True, False]
    assert [(r["reason"], r["clip_id"]) for r in rejects] == [("beyond_duration", "v_a.3")]
    counts = corpus["counts"]["sources"][f"activitynet:{path}"]
    assert counts["clamped"] == 1 and counts["float_noise_snapped"] == 1


def test_broken_json_object_file_is_one_reject_with_line(tmp_path):
    path = tmp_path / "anet.json"
    path.write_text('{"v_a": {"duration": 10.0, "timestamps": [[0, 4]], "sentences": ["One."]},\n'
                    '"v_b": {"duration": 10.0, "timestamps": [[0, 4]], "sentences": ["One."]],\n'
                    '"v_c": {}}\n')
    clips, rejects, corpus = _build(tmp_path, [f"activitynet:{path}"], min_clips=1)
    assert [c["video_id"] for c in clips] == ["v_a"]
    assert len(rejects) == 1 and rejects[0]["reason"] == "malformed_record" and rejects[0]["line"] == 2
