"""Each manifest rule's columnar form (the hdvila fast path's) says what its per-record form says."""
from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lfvila.manifest.config import ManifestConfig
from lfvila.manifest.records import (
    CLEAN_TEXT_PATTERN, DUPLICATE_CLIP, HDVILA_CLIP_ID_PATTERN, RawClip, RawVideo, clean_text, hdvila_clip_number,
    is_clean_text,
)
from lfvila.manifest.validate import may_repeat, validate_video

_TRICKY_TEXTS = ["", " ", "a", "a b", "a  b", " a", "a ", "a\tb", "a\nb", "a\n", "\x7f", "a\x00b", "~!#", "caf\u00e9",
                 "a\u00a0b", "a\u2028b", "\u200b", "a b c d", "x" * 300, "$ 5 . 00 ?", "a\rb", "\x1b[0m"]


def test_clean_text_pattern_is_is_clean_text():
    rng = random.Random(0)
    texts = _TRICKY_TEXTS + ["".join(rng.choice("ab \t\x7f\u00e9~") for _ in range(rng.randint(0, 8)))
                             for _ in range(3000)]
    vector = pc.match_substring_regex(pa.array(texts), CLEAN_TEXT_PATTERN).to_pylist()
    assert vector == [is_clean_text(t) for t in texts]
    assert any(vector) and not all(vector)
    assert all(clean_text(t) == t for t, clean in zip(texts, vector) if clean)  # "clean" means unchanged


def test_clip_id_pattern_is_hdvila_clip_number():
    rng = random.Random(1)
    pairs = [("v", "v.1.mp4"), ("v", "v.007.mp4"), ("v", "v.mp4"), ("v", "v..1.mp4"), ("v", "v.1.mp4.mp4"),
             ("a.1", "a.1.2.mp4"), ("a", "a.1.2.mp4"), ("a.1", "a.1.mp4"), ("v", "v.\u0661.mp4"), ("v", "v.1.MP4"),
             ("v", "v.-1.mp4"), ("v", "v.1 .mp4"), ("x", "y.1.mp4"), ("", ".1.mp4"), ("v", "v.12345678901.mp4"),
             ("v.", "v..3.mp4"), ("v", "vv.1.mp4"), ("caf\u00e9", "caf\u00e9.4.mp4")]
    pairs += [(v, v + "".join(rng.choice(".1m4p") for _ in range(rng.randint(0, 7))))
              for v in ("v", "v.1", "v.") for _ in range(1000)]
    video_ids, clip_ids = (pa.array(column) for column in zip(*pairs))
    parts = pc.extract_regex(clip_ids, HDVILA_CLIP_ID_PATTERN)
    own = pc.fill_null(pc.equal(pc.struct_field(parts, "video"), video_ids), False).to_pylist()
    vector = [n if ok else None for ok, n in zip(own, pc.struct_field(parts, "number").to_pylist())]
    assert vector == [hdvila_clip_number(v, c) for v, c in pairs]
    assert any(vector) and None in vector


def test_may_repeat_rules_out_every_duplicate_reject():
    """Where ``may_repeat`` finds no pair in a video, validation keeps every clip in input order."""
    rng = random.Random(2)
    cfg, checked, with_duplicates = ManifestConfig(), 0, 0
    for v in range(2000):
        n = rng.randint(1, 5)
        numbers = [rng.randint(1, 6) for _ in range(n)]
        starts = [float(rng.randint(0, 4)) for _ in range(n)]
        clips = [RawClip(f"v{v}.{k}.mp4", k, s, s + 1.0, rng.choice("ab"), 1) for k, s in zip(numbers, starts)]
        video = validate_video(RawVideo(f"v{v}", None, clips, "f"), "hdvila", cfg, set())
        pairs = may_repeat(np.ones(n - 1, bool), np.array(numbers), np.array(starts))
        if not pairs.any():
            checked += 1
            assert not video.rejects and [c.clip_index for c in video.clips] == numbers
            assert numbers == sorted(numbers)
        with_duplicates += any(r.reason == DUPLICATE_CLIP for r in video.rejects)
    assert checked > 100 and with_duplicates > 100  # both kinds of video occurred
