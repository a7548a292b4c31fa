"""How well ``hdvila:META?subtitles=DIR`` rebuilds clip text from real caption tracks.

For each caption track, the truth is made from the track's own words: the ``subtitles`` source's
parsing and de-duplication plus the ASR sentence builder (``lfvila.manifest.asr.build_sentences``)
give sentences with word-level times; their spans are written as HD-VILA metadata
(``HH:MM:SS.mmm``, start rounded down, end rounded up to the millisecond, as the release stores
them) without text. The manifest stage then rebuilds each clip's text from the track, and every
word is compared with the sentence it came from:

- right clip: share of the truth's words that sit in the clip of their own sentence;
- duplicated words: words in the clips beyond the truth's (a word in two clips counts once extra),
  as a share of the truth's words; lost words: truth words in no clip.

    .venv/bin/python bench/subtitle_clip_text.py [--workdir /tmp/lfvila-subtitle-clip-text]
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from lfvila.build_config import BuildConfig
from lfvila.manifest.asr import build_sentences
from lfvila.manifest.build import build_manifest
from lfvila.manifest.config import ManifestConfig
from lfvila.manifest.records import RawVideo
from lfvila.manifest.sources._io import read_text
from lfvila.manifest.sources.subtitles import parse_cues
from lfvila.manifest.validate import validate_video

TRACKS = ("vtt-to-json_example_youtube_auto.en.vtt", "webvtt-py_youtube_dl.vtt")


def hms(seconds: float, up: bool) -> str:
    ms = math.ceil(seconds * 1000 - 1e-6) if up else math.floor(seconds * 1000 + 1e-6)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def sentence_truth(track: Path, video_id: str) -> list:
    """The track's sentences (canonical clips) built from its own de-duplicated, timed words."""
    cues = parse_cues(read_text(track, None), video_id)
    cfg = ManifestConfig()
    video = validate_video(RawVideo(video_id, None, cues, str(track)), "subtitles", cfg, set())
    return build_sentences(video, cfg.asr).sentences


def metadata_line(video_id: str, sentences) -> dict:
    """An hdvila metadata object whose clip spans are the sentences' spans, without text."""
    return {"video_id": video_id, "url": f"https://www.youtube.com/watch?v={video_id}",
            "clip": [{"clip_id": f"{video_id}.{k}.mp4", "span": [hms(s.start, False), hms(s.end, True)]}
                     for k, s in enumerate(sentences, 1)]}


def score(truth: list[list[str]], built: list[list[str]]) -> dict:
    """Word-level comparison of clip texts ``built`` with the ``truth`` sentences (same clip order)."""
    truth_words = [w for s in truth for w in s]
    truth_clip = [k for k, s in enumerate(truth) for _ in s]
    built_words = [w for s in built for w in s]
    built_clip = [k for k, s in enumerate(built) for _ in s]
    matcher = difflib.SequenceMatcher(None, truth_words, built_words, autojunk=False)
    matched = right = 0
    for a, b, n in matcher.get_matching_blocks():
        matched += n
        right += sum(truth_clip[a + i] == built_clip[b + i] for i in range(n))
    return {"clips": len(truth), "truth_words": len(truth_words), "built_words": len(built_words),
            "right_clip": right, "right_clip_rate": right / max(1, len(truth_words)),
            "duplicated_words": len(built_words) - matched,
            "duplicated_rate": (len(built_words) - matched) / max(1, len(truth_words)),
            "lost_words": len(truth_words) - matched}


def run(data: Path, workdir: Path) -> list[dict]:
    """Score every track in ``TRACKS`` (read from ``data``), one manifest build over all of them."""
    workdir.mkdir(parents=True, exist_ok=True)
    subs = workdir / "subs"
    subs.mkdir(exist_ok=True)
    truths = {}
    with open(workdir / "meta.jsonl", "w") as f:
        for i, name in enumerate(TRACKS):
            video_id = f"track{i}"
            (subs / f"{video_id}.en.vtt").write_bytes((data / name).read_bytes())
            sentences = sentence_truth(data / name, video_id)
            truths[video_id] = (name, [s.text.split() for s in sentences])
            f.write(json.dumps(metadata_line(video_id, sentences)) + "\n")
    out = workdir / "corpus"
    build_manifest(BuildConfig(), out, [f"hdvila:{workdir / 'meta.jsonl'}?subtitles={subs}"])
    clips = pq.read_table(out / "clips.parquet").to_pylist()
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    rows = []
    for video_id, (name, truth) in truths.items():
        text_of = {c["clip_id"]: c["text"].split() for c in clips if c["video_id"] == video_id}
        built = [text_of.get(f"{video_id}.{k}.mp4", []) for k in range(1, len(truth) + 1)]
        row = {"track": name, **score(truth, built),
               "rejects": sorted(r["reason"] for r in rejects if r["video_id"] == video_id and r["stage"] != "merge")}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
                        / "annotations" / "asr_subtitles")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lfvila-subtitle-clip-text"))
    args = parser.parse_args()
    print("| track | clips | words | right clip | duplicated | lost | validation rejects |")
    print("|---|---|---|---|---|---|---|")
    for r in run(args.data.resolve(), args.workdir):
        print(f"| {r['track']} | {r['clips']} | {r['truth_words']:,} | {r['right_clip']:,} ({r['right_clip_rate']:.4f}) | "
              f"{r['duplicated_words']} ({r['duplicated_rate']:.4f}) | {r['lost_words']} | {len(r['rejects'])} |")
    print(f"\npython {sys.version.split()[0]}; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


if __name__ == "__main__":
    main()
