"""hdvila's columnar fast path writes exactly what the per-record path writes (byte-identical tables)."""
from __future__ import annotations

import functools
import hashlib
import json
import random
from pathlib import Path

import pytest

from lfvila.build_config import BuildConfig
from lfvila.manifest.build import build_manifest
from lfvila.manifest.config import ManifestConfig
from lfvila.manifest.fastpath import check_batch
from lfvila.manifest.records import parse_hms, parse_time
from lfvila.manifest.sources import hdvila

TABLES = ("clips.parquet", "rejects.parquet", "longform.parquet")


def _hms(ms: int) -> str:
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def test_parse_hms_is_parse_time_bit_for_bit():
    rng = random.Random(0)
    good = [_hms(rng.randrange(0, 100 * 3600 * 1000)) for _ in range(20000)]
    good += ["00:00:00.000", "99:59:59.999", "00:00:00.001", "01:02:03.100", "00:00:60.000", "00:99:99.999"]
    ok, seconds = parse_hms(good)
    assert ok.all()
    assert seconds.tolist() == [parse_time(v) for v in good]  # == on floats: identical bits
    bad = ["0:00:01.000", "00:00:01,000", "00:00:01.0000", "100:00:00.00", "00:0a:01.000", "00-00:01.000",
           "00:00:01 000", "", "00:00:1é.000", "00:00:01.00x"]
    ok, _ = parse_hms(bad + good[:3])
    assert ok.tolist() == [False] * len(bad) + [True] * 3


def _clip(video_id, number, start_ms, end_ms, text):
    return {"clip_id": f"{video_id}.{number}.mp4", "span": [_hms(start_ms), _hms(end_ms)], "text": text}


def _quirky_metadata(path: Path) -> Path:
    """Plain videos in bulk plus one line for each way a video can leave the fast path."""
    rng = random.Random(1)
    words = "the a cut paint board water heat oil pan minutes next first".split()
    lines: list[bytes] = []

    def add(obj) -> None:
        lines.append(obj if isinstance(obj, bytes) else json.dumps(obj).encode() + b"\n")

    for v in range(300):
        video_id, t, number, clips = f"vid{v:04d}", rng.randrange(0, 60000), 0, []
        for _ in range(rng.randint(1, 12)):
            number += 2 if rng.random() < 0.15 else 1
            length = rng.randrange(2000, 15000)
            start, end = (t, t + length) if rng.random() > 0.02 else (t + length, t)  # a few inverted spans
            clips.append(_clip(video_id, number, start, end, " ".join(rng.choice(words) for _ in range(8))))
            t += length + rng.randrange(0, 3000)
        add({"video_id": video_id, "url": "u", "clip": clips})
        if v % 37 == 5:
            add({"video_id": f"vid{v - 3:04d}", "clip": clips[:1]})  # a repeated video id, maybe across batches
    plain = [_clip("q", n, 1000 * n, 1000 * n + 900, f"sentence {n}") for n in range(1, 6)]
    add({"video_id": "zeros", "clip": [_clip("zeros", "007", 0, 900, "a b"), _clip("zeros", 8, 1000, 1900, "c d"),
                                       _clip("zeros", 9, 2000, 2900, "e f"), _clip("zeros", 10, 3000, 3900, "g h")]})
    add({"video_id": "shuffled", "clip": [dict(c, clip_id=c["clip_id"].replace("q.", "shuffled.")) for c in
                                          (plain[1], plain[0], plain[2], plain[3], plain[4])]})
    add({"video_id": "same.start", "clip": [_clip("same.start", n, 5000, 5900 + n, f"s {n}") for n in range(1, 6)]})
    add({"video_id": "samecontent", "clip": [_clip("samecontent", n, 0 if n in (2, 3) else 1000 * n, 900 if n in (2, 3) else 1000 * n + 900,
                                                   "same" if n in (2, 3) else f"s {n}") for n in range(1, 7)]})
    add({"video_id": "dupe", "clip": [_clip("dupe", 1, 0, 900, "x y"), _clip("dupe", 1, 1000, 1900, "z w")]})
    add({"video_id": "accents", "clip": [_clip("accents", n, 1000 * n, 1000 * n + 900, f"caf\u00e9 {n}") for n in range(1, 6)]})
    add(b'{"video_id": "escaped", "clip": [{"clip_id": "escaped.1.mp4", "span": ["00:00:01.000", "00:00:02.000"], "text": "na\\u00efve \\u0007 bell"}]}\n')
    add({"video_id": "spaces", "clip": [_clip("spaces", 1, 0, 900, "two  spaces"), _clip("spaces", 2, 1000, 1900, " edge")]})
    add({"video_id": "numbers", "clip": [{"clip_id": "numbers.1.mp4", "span": [1.5, 3.0], "text": "numeric span"}]})
    add({"video_id": "short", "clip": [{"clip_id": "short.1.mp4", "span": ["0:00:01.000", "0:00:02.500"], "text": "h:mm:ss"}]})
    add({"video_id": "hours", "clip": [_clip("hours", 1, 0, 900, "a"),
                                       {"clip_id": "hours.2.mp4", "span": ["100:00:00.000", "100:00:01.000"], "text": "b"}]})
    add({"video_id": "timed", "duration": 3.0, "clip": [_clip("timed", n, 1000 * (n - 1), 1000 * n + 4, "t") for n in (1, 2, 3)]})
    add({"video_id": "empty", "clip": []})
    add({"video_id": "notext", "clip": [{"clip_id": "notext.1.mp4", "span": ["00:00:01.000", "00:00:02.000"]}]})
    add({"video_id": "nulltext", "clip": [{"clip_id": "nulltext.1.mp4", "span": ["00:00:01.000", "00:00:02.000"], "text": None}]})
    add({"video_id": "emptytext", "clip": [_clip("emptytext", 1, 0, 900, "")]})
    add({"video_id": "../evil", "clip": [_clip("../evil", 1, 0, 900, "x")]})
    add({"video_id": "badid", "clip": [_clip("other", 1, 0, 900, "x"), {"clip_id": "badid.x.mp4", "span": ["00:00:01.000", "00:00:02.000"], "text": "y"}]})
    add({"video_id": "longid", "clip": [_clip("longid", "1" * 9, 0, 900, "x")]})
    add({"video_id": "x" * 195, "clip": [_clip("x" * 195, 1, 0, 900, "too long a clip id")]})
    add(b'{"video_id": "nan", "clip": [{"clip_id": "nan.1.mp4", "span": ["00:00:01.000", "00:00:02.000"], "text": "a"}], "score": NaN}\n')
    add(b'{"video_id": "surrogate", "clip": [{"clip_id": "surrogate.1.mp4", "span": ["00:00:01.000", "00:00:02.000"], "text": "\\udcff"}]}\n')
    add(b'{"video_id": "bytes", "clip": [{"clip_id": "bytes.1.mp4", "span": ["00:00:01.000", "00:00:02.000"], "text": "x\xff"}]}\n')
    add(b"\n")
    add(b"not json\n")
    add(b"[1, 2]\n")
    add({"video_id": "span3", "clip": [{"clip_id": "span3.1.mp4", "span": ["00:00:01.000", "00:00:02.000", "x"], "text": "a"}]})
    add({"video_id": "spanstr", "clip": [{"clip_id": "spanstr.1.mp4", "span": "ab", "text": "a"}]})
    add({"video_id": "q", "clip": plain})
    add({"video_id": "q", "clip": plain})  # the same video twice in a row
    path.write_bytes(b"".join(lines))
    return path


def _digests(out: Path) -> dict:
    return {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in TABLES}


@pytest.mark.parametrize("manifest", [{}, {"min_clips": 2, "max_clips": 3}, {"min_clips": 1, "max_duration_s": 20.0}],
                         ids=["defaults", "max_clips", "max_duration"])
def test_fast_path_tables_are_byte_identical_to_the_per_record_path(tmp_path, monkeypatch, manifest):
    meta = _quirky_metadata(tmp_path / "meta.jsonl")
    cfg = BuildConfig(manifest=ManifestConfig(**manifest))
    results = {}
    for name, batch_clips in (("fast", None), ("tiny_batches", 7), ("per_record", 0)):
        with monkeypatch.context() as m:
            if batch_clips == 0:
                m.delattr(hdvila, "read_batches")  # build.py then reads with hdvila.read
            elif batch_clips:
                m.setattr(hdvila, "read_batches", functools.partial(hdvila.read_batches, batch_clips=batch_clips))
            counts = build_manifest(cfg, tmp_path / name, [f"hdvila:{meta}"])
        results[name] = (_digests(tmp_path / name), counts["sources"][f"hdvila:{meta}"])
    assert results["fast"] == results["per_record"] == results["tiny_batches"]
    counts = results["fast"][1]
    # The quirks really happened: rejects of several kinds, merge rejects, kept videos.
    assert {"duplicate_clip", "end_not_after_start", "malformed_record", "invalid_utf8", "unsafe_id",
            "empty_text"} <= set(counts["rejects_by_reason"])
    assert counts["videos_with_clips"] > 250 and counts["clips_in_longform"] > 0


def test_fast_path_is_used_for_plain_lines(tmp_path):
    meta = _quirky_metadata(tmp_path / "meta.jsonl")
    items = list(hdvila.read_batches(meta, {}, None, {}))
    batches = [i for i in items if isinstance(i, hdvila.LineBatch)]
    assert sum(len(b.video_ids) for b in batches) > 300  # the bulk videos (and some quirky ones) are batched
    # Lines that are not plain (numeric span, no text, bad JSON...) come one by one, in line order.
    assert any(isinstance(i, hdvila.RawVideo) and i.video_id == "numbers" for i in items)


def _seconds_text(t: float):
    """A real annotation time in the release's form (negative ones as numbers: not a plain line)."""
    return _hms(round(t * 1000)) if t >= 0 else t


def test_fast_path_is_byte_identical_on_real_captions(tmp_path, monkeypatch, shared_data):
    """ActivityNet Captions (real sentences: edge and double spaces, overlapping and out-of-order spans,
    ends past the duration) written as HD-VILA lines, once as released and once with whitespace
    collapsed and clips in time order (so that many videos take the fast path), through both paths."""
    annotations = json.loads((shared_data / "annotations/activitynet_captions/val_1.json").read_text())
    lines = []
    for v, (video_id, a) in enumerate(list(annotations.items())[:800]):
        clips = [{"clip_id": f"{video_id}.{n}.mp4", "span": [_seconds_text(s), _seconds_text(e)], "text": text}
                 for n, ((s, e), text) in enumerate(zip(a["timestamps"], a["sentences"]), 1)]
        tidy = [{"clip_id": f"{video_id}-tidy.{n}.mp4", "span": c["span"], "text": " ".join(c["text"].split())}
                for n, c in enumerate(sorted(clips, key=lambda c: str(c["span"][0])), 1)]
        duration = {"duration": a["duration"]} if v % 5 == 0 else {}
        lines.append(json.dumps({"video_id": video_id, **duration, "clip": clips}))
        lines.append(json.dumps({"video_id": f"{video_id}-tidy", "clip": tidy}))
    meta = tmp_path / "activitynet_as_hdvila.jsonl"
    meta.write_text("\n".join(lines) + "\n")
    batches = [i for i in hdvila.read_batches(meta, {}, None, {}) if isinstance(i, hdvila.LineBatch)]
    fast_videos = sum(sum(check_batch(b, ManifestConfig().max_id_length, set()).clean) for b in batches)
    assert 800 // 2 < fast_videos < 2 * 800  # the fast path really ran on many videos, not on all
    results = {}
    for name in ("fast", "per_record"):
        with monkeypatch.context() as m:
            if name == "per_record":
                m.delattr(hdvila, "read_batches")
            counts = build_manifest(BuildConfig(), tmp_path / name, [f"hdvila:{meta}"])
        results[name] = (_digests(tmp_path / name), counts["sources"][f"hdvila:{meta}"])
    assert results["fast"] == results["per_record"]
    counts = results["fast"][1]
    assert counts["clips_in_longform"] > 0
