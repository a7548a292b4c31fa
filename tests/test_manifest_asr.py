"""ASR fragments -> sentences: rolling de-duplication, word timing, splitting, on literal and real files."""
from __future__ import annotations


import pytest

from lfvila.manifest.asr import build_sentences, dedupe_words, segment, split_spans
from lfvila.manifest.config import AsrConfig, ManifestConfig
from lfvila.manifest.records import RawClip, RawVideo
from lfvila.manifest.sources import get_adapter
from lfvila.manifest.validate import validate_video


def _video(rows: list[tuple], word_starts: dict | None = None, video_id: str = "v") -> RawVideo:
    clips = [RawClip(f"{video_id}.{i}", i, s, e, t, i + 1, (word_starts or {}).get(i)) for i, (s, e, t) in enumerate(rows)]
    return RawVideo(video_id, None, clips, "test")


def _validated(raw: RawVideo, cfg: ManifestConfig | None = None):
    return validate_video(raw, "howto100m", cfg or ManifestConfig(), set())


def test_rolling_duplication_removed_and_words_interpolated():
    raw = _video([(0.0, 4.0, "check the bowl"), (4.0, 6.0, "the bowl of berries"), (6.0, 8.0, "of berries"),
                  (8.0, 10.0, "berries jam")])
    tw = dedupe_words(_validated(raw), AsrConfig())
    assert tw.words == ["check", "the", "bowl", "of", "berries", "jam"]
    assert tw.raw_words == 11
    # "of berries" is new in the second cue: interpolated by character position inside 4..6 s.
    of_index = tw.words.index("of")
    assert tw.starts[of_index] == pytest.approx(4.0)
    assert tw.starts[of_index + 1] == pytest.approx(4.0 + 2.0 * 3 / 10)
    assert tw.starts[0] == 0.0 and tw.starts[1] == pytest.approx(4.0 * 6 / 14)
    # The last word of "jam"'s cue ends at its cue end; nothing overlaps the next word.
    assert tw.ends[-1] == 10.0
    assert all(e <= s2 for e, s2 in zip(tw.ends, tw.starts[1:]))


def test_word_timing_tags_win_over_interpolation():
    raw = _video([(1.0, 3.0, "in the wake"), (3.0, 4.0, "in the wake of Orlando")],
                 word_starts={0: (1.0, 1.5, 2.5), 1: (None, None, None, 3.2, 3.6)})
    tw = dedupe_words(_validated(raw), AsrConfig())
    assert tw.words == ["in", "the", "wake", "of", "Orlando"]
    assert tw.starts == [1.0, 1.5, 2.5, 3.2, 3.6]


def test_word_duration_capped_through_silence():
    raw = _video([(0.0, 1.0, "hello"), (10.0, 200.0, "minerals")])
    result = build_sentences(_validated(raw), AsrConfig(max_word_s=2.0, min_sentence_words=1))
    assert [(s.text, s.start, s.end) for s in result.sentences] == [("hello", 0.0, 1.0), ("minerals", 10.0, 12.0)]


def test_unpunctuated_split_on_pauses_and_limits():
    cfg = AsrConfig(pause_s=1.0, max_sentence_words=4, min_sentence_words=2, max_sentence_s=100.0)
    starts = [0, 1, 2, 3, 10, 11, 12, 13, 14, 15, 16.5, 17.5]
    ends = [s + 0.9 for s in starts]
    # Pause between 3 and 10 ends a sentence; the 8-word tail is cut at its largest pause (after 16).
    assert segment(starts, ends, cfg, None, pause_cuts=True) == [(0, 4), (4, 8), (8, 12)]
    cfg_s = AsrConfig(pause_s=50.0, max_sentence_words=100, max_sentence_s=3.5, min_sentence_words=1)
    assert segment(starts[:4], ends[:4], cfg_s, None, pause_cuts=True) == [(0, 3), (3, 4)]


def test_punctuated_text_goes_through_splitter():
    raw = _video([(0.0, 3.0, "Dr. Smith went home."), (3.0, 6.0, "He was tired. Then he slept!")])
    result = build_sentences(_validated(raw), AsrConfig())
    assert result.punctuated
    assert [s.text for s in result.sentences] == ["Dr. Smith went home.", "He was tired.", "Then he slept!"]
    assert result.sentences[0].start == 0.0 and result.sentences[1].start == 3.0
    assert [s.clip_id for s in result.sentences] == ["v.1", "v.2", "v.3"]


@pytest.mark.parametrize("splitter", ["punkt", "pysbd"])
def test_splitters_give_spans(splitter):
    text = "Mr. Brown cut the board. It fits!"
    assert [text[a:b].strip() for a, b in split_spans(text, splitter)] == ["Mr. Brown cut the board.", "It fits!"]


def test_real_youtube_auto_captions(shared_data):
    path = shared_data / "annotations/asr_subtitles/vtt-to-json_example_youtube_auto.en.vtt"
    (raw,) = [v for v in get_adapter("subtitles").read(path, {}, None, {}) if isinstance(v, RawVideo)]
    video = _validated(raw)
    tw = dedupe_words(video, AsrConfig())
    # Each spoken word appears once: rolling lines repeat roughly two thirds of the raw words.
    assert tw.raw_words == 3876 and len(tw.words) < 0.4 * tw.raw_words
    assert tw.words[:9] == ["in", "the", "wake", "of", "the", "Orlando", "massacre", "Democrats", "have"]
    assert tw.starts[6:9] == [1.35, 1.77, 2.22]
    assert all(a <= b for a, b in zip(tw.starts, tw.starts[1:]))
    result = build_sentences(video, AsrConfig())
    assert not result.punctuated and len(result.sentences) > 20
    assert all(len(s.text.split()) <= 40 and s.end - s.start <= 15.0 + 2.0 for s in result.sentences)
    assert " ".join(s.text for s in result.sentences) == " ".join(tw.words)


def test_real_howto100m_sentences_cover_words(shared_data):
    path = shared_data / "annotations/howto100m_asr_captions/small_train_captions/-tCQ4tCQdWE.csv"
    (raw,) = [v for v in get_adapter("howto100m").read(path, {}, None, {}) if isinstance(v, RawVideo)]
    video = _validated(raw)
    result = build_sentences(video, AsrConfig())
    assert result.sentences[0].text.startswith("check pic tonight pick bowl night")
    assert result.kept_words < result.raw_words
    assert all(s.end > s.start for s in result.sentences)
    assert all(a.end <= b.start for a, b in zip(result.sentences, result.sentences[1:]))
