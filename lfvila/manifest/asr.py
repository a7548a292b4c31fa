"""Raw ASR fragments (rolling caption cues or rows) -> sentences with their own time spans.

Algorithm (measured on the real files in docs/manifest.md):

1. Order the video's valid fragments by start time.
2. Remove rolling duplication: each fragment's leading words that repeat the end of the text
   already taken (longest match, compared lower-cased without edge punctuation, looking back at
   most ``overlap_window_words``) are dropped; only its new words are kept.
3. Time every kept word: a word's own timing tag (YouTube ``<c>`` tags) when the source has one,
   otherwise linear interpolation by character position inside its fragment, between the
   fragment's start, the timed words around it and the fragment's end. A word ends where the next
   word starts, the last new word of a fragment where the fragment ends, and lasts at most
   ``max_word_s`` (cues stay up through silences).
4. Split. Punctuated text (at least ``punctuated_min_ratio`` of the words end in . ? !) goes
   through the sentence splitter (pysbd by default, chosen by the measured comparison in
   docs/manifest.md). Unpunctuated text ends a sentence at every pause of at least ``pause_s``.
   Either way a sentence longer than ``max_sentence_words`` or ``max_sentence_s`` is cut at its
   largest internal pause (never leaving fewer than ``min_sentence_words`` words before the cut).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import lru_cache

from lfvila.manifest.config import AsrConfig
from lfvila.manifest.records import Clip
from lfvila.manifest.validate import ValidatedVideo

_EDGE_PUNCT = "\"'.,?!;:()[]-\u2019\u201c\u201d\u2026"
_SENTENCE_END = (".", "?", "!", "\u2026")
MIN_SENTENCE_S = 0.01  # a sentence whose words all share one time gets this length


@dataclass
class TimedWords:
    """The de-duplicated word stream of one video; ``fragment_of[i]`` indexes the source fragment."""

    words: list[str]
    starts: list[float]
    ends: list[float]
    fragment_of: list[int]
    fragments: list[Clip]
    raw_words: int  # words over all fragments before de-duplication


def _norm(word: str) -> str:
    return word.strip(_EDGE_PUNCT).lower()


def _overlap(history: list[str], words: list[str], window: int) -> int:
    """Length of the longest suffix of ``history`` that equals a prefix of ``words``."""
    for k in range(min(len(history), len(words), window), 0, -1):
        if history[-k:] == words[:k]:
            return k
    return 0


def _interpolate(offsets: list[int], length: int, known: list, start: float, end: float) -> list[float]:
    """Start time of each word: its known time, else linear in character offset between anchors."""
    anchors_pos = [0] + [p for p, t in zip(offsets, known) if t is not None] + [length]
    anchors_t = [start] + [t for t in known if t is not None] + [end]
    for i in range(1, len(anchors_t)):  # timing tags are monotonic in practice; enforce it
        anchors_t[i] = min(max(anchors_t[i], anchors_t[i - 1]), max(end, anchors_t[i - 1]))
    times = []
    for p, t in zip(offsets, known):
        if t is not None:
            j = bisect.bisect_left(anchors_pos, p, 1, len(anchors_pos) - 1)
            times.append(anchors_t[j])
            continue
        j = bisect.bisect_right(anchors_pos, p, 1, len(anchors_pos) - 1)  # next anchor index
        p0, p1, t0, t1 = anchors_pos[j - 1], anchors_pos[j], anchors_t[j - 1], anchors_t[j]
        times.append(t0 if p1 <= p0 else t0 + (t1 - t0) * (p - p0) / (p1 - p0))
    return times


def dedupe_words(video: ValidatedVideo, cfg: AsrConfig) -> TimedWords:
    """Steps 1-3: order fragments, drop rolling duplication, time each kept word."""
    window, max_word_s = cfg.overlap_window_words, cfg.max_word_s
    fragments = sorted(video.clips, key=lambda c: (c.start, c.clip_index))
    out = TimedWords([], [], [], [], fragments, 0)
    history: list[str] = []
    for f_index, frag in enumerate(fragments):
        words = frag.text.split()
        out.raw_words += len(words)
        known = video.word_starts.get(frag.clip_id)
        if known is None or len(known) != len(words):
            known = [None] * len(words)
        norm = [_norm(w) for w in words]
        k = _overlap(history, norm, window)
        history.extend(norm[k:])
        del history[:-window]
        new_words, new_known = words[k:], list(known[k:])
        if not new_words:
            continue
        offsets, pos = [], 0
        for w in new_words:
            offsets.append(pos)
            pos += len(w) + 1
        starts = _interpolate(offsets, pos - 1, new_known, frag.start, frag.end)
        ends = [min(e, s + max_word_s) for s, e in zip(starts, starts[1:] + [max(frag.end, starts[-1])])]
        out.words.extend(new_words)
        out.starts.extend(starts)
        out.ends.extend(ends)
        out.fragment_of.extend([f_index] * len(new_words))
    # A word never runs into the next one (fragments may overlap in time).
    for i in range(len(out.words) - 1):
        if out.ends[i] > out.starts[i + 1]:
            out.ends[i] = max(out.starts[i], out.starts[i + 1])
    return out


def is_punctuated(words: list[str], min_ratio: float) -> bool:
    if not words:
        return False
    enders = sum(1 for w in words if w.rstrip("\"')]\u201d\u2019").endswith(_SENTENCE_END))
    return enders >= max(1, min_ratio * len(words))


@lru_cache(maxsize=None)
def _splitter(name: str):
    """A callable text -> [(start, end)] character spans; the data ships inside the packages."""
    if name == "punkt":
        import punkt

        tokenizer = punkt.PunktSentenceTokenizer(punkt.load_model("english"))
        return lambda text: list(tokenizer.span_tokenize(text))
    import pysbd

    segmenter = pysbd.Segmenter(language="en", clean=False, char_span=True)
    return lambda text: [(s.start, s.end) for s in segmenter.segment(text)]


def split_spans(text: str, splitter: str) -> list[tuple[int, int]]:
    """Sentence character spans of punctuated ``text`` by the named splitter ("punkt" or "pysbd")."""
    return _splitter(splitter)(text)


def segment(starts: list[float], ends: list[float], cfg: AsrConfig, hard_cuts: set | None,
            pause_cuts: bool) -> list[tuple[int, int]]:
    """Step 4: word index ranges ``[i, j)`` of sentences, obeying cuts, pauses and the length limits."""
    n = len(starts)
    pieces: list[tuple[int, int]] = []
    first = 0
    for i in range(1, n):
        if (hard_cuts is not None and i in hard_cuts) or (pause_cuts and starts[i] - ends[i - 1] >= cfg.pause_s):
            pieces.append((first, i))
            first = i
            continue
        while first < i and (i + 1 - first > cfg.max_sentence_words or ends[i] - starts[first] > cfg.max_sentence_s):
            # Cut [first, i] at its largest pause, keeping at least min_sentence_words before it;
            # ties go to the latest cut so sentences stay as long as the limits allow.
            lo = first + cfg.min_sentence_words
            cut = i if lo > i else max(range(lo, i + 1), key=lambda c: (starts[c] - ends[c - 1], c))
            pieces.append((first, cut))
            first = cut
    if n:
        pieces.append((first, n))
    return pieces


@dataclass
class SentenceResult:
    sentences: list[Clip]
    raw_words: int
    kept_words: int
    punctuated: bool


def build_sentences(video: ValidatedVideo, cfg: AsrConfig) -> SentenceResult:
    """All steps: the video's valid fragments -> sentences as canonical clips (ids ``<video_id>.<k>``)."""
    tw = dedupe_words(video, cfg)
    punctuated = is_punctuated(tw.words, cfg.punctuated_min_ratio)
    if punctuated:
        text = " ".join(tw.words)
        offsets, pos = [], 0
        for w in tw.words:
            offsets.append(pos)
            pos += len(w) + 1
        cuts = {bisect.bisect_left(offsets, a) for a, _ in split_spans(text, cfg.splitter)} - {0}
        ranges = segment(tw.starts, tw.ends, cfg, cuts, pause_cuts=False)
    else:
        ranges = segment(tw.starts, tw.ends, cfg, None, pause_cuts=True)
    sentences = []
    for k, (i, j) in enumerate(ranges, 1):
        start = tw.starts[i]
        end = max(tw.ends[j - 1], start + MIN_SENTENCE_S)
        first_fragment = tw.fragments[tw.fragment_of[i]]
        sentences.append(Clip(f"{video.video_id}.{k}", k, start, end, " ".join(tw.words[i:j]), False, first_fragment.line))
    return SentenceResult(sentences, tw.raw_words, len(tw.words), punctuated)
