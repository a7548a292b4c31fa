"""Merge edge cases: numbering gaps, equal timestamps, overlaps, single clips, max-length splits, keys, splits."""
from __future__ import annotations

import re

import pytest

from lfvila.manifest.config import ManifestConfig
from lfvila.manifest.merge import escape_id, longform_key, merge_video, runs_of, split_of, unescape_id
from lfvila.manifest.records import Clip


def _clips(spans, numbers=None) -> list[Clip]:
    numbers = numbers or list(range(1, len(spans) + 1))
    return [Clip(f"v.{n}", n, float(s), float(e), f"text {n}", False, 0) for n, (s, e) in zip(numbers, spans)]


def longform_videos(clips, by_number, cfg):
    """The long-form videos :func:`merge_video` makes of one video's clips (not the clips left out)."""
    return merge_video(clips, by_number, cfg)[0]


def _indices(videos):
    return [[c.clip_index for c in v] for v in videos]


def test_hdvila_runs_break_at_gaps_in_clip_numbering():
    spans = [(i * 10, i * 10 + 5) for i in range(11)]
    clips = _clips(spans, numbers=[1, 2, 3, 4, 6, 7, 8, 10, 11, 12, 13])
    cfg = ManifestConfig(min_clips=4)
    assert _indices(runs_of(clips, True, cfg)) == [[1, 2, 3, 4], [6, 7, 8], [10, 11, 12, 13]]
    assert _indices(longform_videos(clips, True, cfg)) == [[1, 2, 3, 4], [10, 11, 12, 13]]
    # Adjacency is by number, not time: a large time gap between n and n+1 keeps the run.
    far = _clips([(0, 5), (100, 105), (500, 505), (900, 905)])
    assert _indices(longform_videos(far, True, cfg)) == [[1, 2, 3, 4]]
    # Input order does not matter.
    assert _indices(longform_videos(list(reversed(clips)), True, cfg)) == [[1, 2, 3, 4], [10, 11, 12, 13]]


def test_time_runs_with_gap_and_overlap_limits():
    cfg = ManifestConfig(min_clips=2, max_gap_s=2.0, max_overlap_s=0.5)
    clips = _clips([(0, 5), (6, 10), (12.5, 14), (14, 20), (19.6, 25), (24, 30)])
    # gaps: 1.0 ok | 2.5 breaks | 0 ok | overlap 0.4 ok | overlap 1.0 breaks
    assert _indices(runs_of(clips, False, cfg)) == [[1, 2], [3, 4, 5], [6]]
    assert _indices(longform_videos(clips, False, cfg)) == [[1, 2], [3, 4, 5]]


def test_equal_timestamps_are_ordered_deterministically():
    clips = _clips([(5, 10), (0, 5), (5, 10), (0, 5)])
    unlimited = ManifestConfig(min_clips=1, max_gap_s=None, max_overlap_s=None)
    assert _indices(longform_videos(clips, False, unlimited)) == [[2, 4, 1, 3]]
    # Identical spans overlap fully, so a tight overlap limit separates them.
    strict = ManifestConfig(min_clips=1, max_gap_s=1.0, max_overlap_s=0.5)
    assert _indices(runs_of(clips, False, strict)) == [[2], [4, 1], [3]]


def test_single_clip_videos():
    one = _clips([(0, 5)])
    assert longform_videos(one, True, ManifestConfig(min_clips=4)) == []
    assert _indices(longform_videos(one, False, ManifestConfig(min_clips=1))) == [[1]]
    assert longform_videos([], True, ManifestConfig()) == []


def test_long_runs_split_by_max_clips_and_max_duration():
    clips = _clips([(i * 10, i * 10 + 9) for i in range(11)])
    by_count = ManifestConfig(min_clips=3, max_clips=4)
    assert _indices(longform_videos(clips, True, by_count)) == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11]]
    short_tail = ManifestConfig(min_clips=4, max_clips=4)
    assert _indices(longform_videos(clips, True, short_tail)) == [[1, 2, 3, 4], [5, 6, 7, 8]]
    by_time = ManifestConfig(min_clips=2, max_duration_s=30.0)  # a piece spans at most 30 s
    videos = longform_videos(clips, True, by_time)
    assert _indices(videos) == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11]]
    assert all(v[-1].end - v[0].start <= 30.0 for v in videos)
    whole = ManifestConfig(min_clips=4)
    assert _indices(longform_videos(clips, True, whole)) == [list(range(1, 12))]


@pytest.mark.parametrize("video_id", ["QMi8x8o55Ns", "-tCQ4tCQdWE", "v_a.b~c", "talk en.01", "caf\u00e9/x", "a%20b"])
def test_keys_are_dot_free_unique_and_map_back(video_id):
    key = longform_key("hdvila", video_id, 7)
    assert "." not in key and re.fullmatch(r"[A-Za-z0-9_%~-]+", key)
    source, escaped, index = key.split("~")
    assert (source, unescape_id(escaped), int(index)) == ("hdvila", video_id, 7)
    assert key != longform_key("hdvila", video_id, 8) and key != longform_key("youcook2", video_id, 7)


def test_escape_is_injective_and_long_ids_are_hashed():
    assert escape_id("a.b") != escape_id("a%2Eb")
    long_a, long_b = "x" * 150 + "a", "x" * 150 + "b"
    key_a, key_b = longform_key("howto100m", long_a, 1), longform_key("howto100m", long_b, 1)
    assert key_a != key_b and len(key_a) < 120


def test_split_is_deterministic_by_video_id():
    ids = [f"video{i}" for i in range(4000)]
    splits = [split_of(v, 0.1) for v in ids]
    assert splits == [split_of(v, 0.1) for v in ids]
    assert 300 < splits.count("val") < 500
    assert all(split_of(v, 0.0) == "train" for v in ids[:50])
