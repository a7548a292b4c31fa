"""Shard-build throughput: lfvila's frame pipeline vs a bare ffmpeg decode of the same spans, side by side.

Measures source-video seconds processed per wall-clock second and per CPU second (this process plus
its ffmpeg children), one core: lfvila runs with ``workers=1`` and ``video.decoder_threads=1``, the
bare decode is ``ffmpeg -threads 1 -ss S -to E -i V -an -f null -`` per span (the practical floor: it
decodes every frame and does nothing with it). Inputs: the real videos of ../shared/data/videos
(natural and rendered; bad/ excluded) and a synthetic 720p H.264 video made with ffmpeg.

    .venv/bin/python bench/build_throughput.py [--synthetic-seconds 240] [--repeat 2]

video2dataset 1.3.0 is not run: it pins torch==2.1.2, torchaudio, torchdata and bitsandbytes, so a
separate venv would pull a multi-GB CUDA torch build (see BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lfvila.build_config import BuildConfig  # noqa: E402
from lfvila.config import load_config  # noqa: E402
from lfvila.shards.build import build_shards  # noqa: E402
from lfvila.shards.fixtures import make_testsrc_video, sentences_every, write_longform  # noqa: E402
from lfvila.video.decode import ffmpeg_exe  # noqa: E402


def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _duration(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        return (c.duration or 0) / 1e6


def real_spans(shared: Path, videos: Path) -> list[dict]:
    """One span per good shared video: 10 % to 90 % of its duration (a real seek into the file)."""
    spans = []
    for path in sorted((shared / "videos").glob("*/*")):
        if path.parent.name == "bad":
            continue
        video_id = f"{path.parent.name}__{path.name}".replace(".", "_")
        link = videos / f"{video_id}{path.suffix}"
        if not link.exists():
            os.symlink(path, link)
        d = _duration(path)
        spans.append({"video_id": video_id, "path": link, "start": round(0.1 * d, 3), "end": round(0.9 * d, 3)})
    return spans


def synthetic_spans(work: Path, videos: Path, seconds: float) -> list[dict]:
    """Two long-form spans of a synthetic 1280x720 30 fps H.264 video (LF-VILA-like: ~2 min each)."""
    path = videos / "synthetic720.mp4"
    if not path.exists():
        print(f"making a {seconds:.0f} s 720p H.264 video with ffmpeg ...", flush=True)
        make_testsrc_video(work / "synthetic720.tmp.mp4", seconds)
        os.replace(work / "synthetic720.tmp.mp4", path)
    half = seconds / 2
    return [{"video_id": "synthetic720", "path": path, "start": 5.0, "end": half},
            {"video_id": "synthetic720", "path": path, "start": half, "end": seconds - 5.0}]


def run_lfvila(spans: list[dict], videos: Path, out: Path, threads: int) -> tuple[float, float, dict]:
    """Build one shard per span set, one sample per span with 8 s sentences covering all of it."""
    shutil.rmtree(out, ignore_errors=True)
    rows = []
    for i, s in enumerate(spans):
        length = s["end"] - s["start"]
        step = length / max(1, round(length / 8.0))  # ~8 s sentences, none left too short for a frame
        rows.append({"key": f"s{i:04d}", "video_id": s["video_id"],
                     "sentences": sentences_every(s["start"], s["end"], step, s["video_id"])})
    write_longform(out / "longform.parquet", rows)
    cfg = load_config(BuildConfig, None, [f"video.decoder_threads={threads}", "shards.samples_per_shard=1000"])
    wall, cpu = time.perf_counter(), _cpu_seconds()
    summary = build_shards(cfg, out, videos, workers=1)
    return time.perf_counter() - wall, _cpu_seconds() - cpu, summary["totals"]


def run_bare(spans: list[dict], threads: int) -> tuple[float, float]:
    exe = ffmpeg_exe()
    wall, cpu = time.perf_counter(), _cpu_seconds()
    for s in spans:
        # -an: lfvila decodes only the video stream; decoding audio too would flatter the comparison.
        subprocess.run([exe, "-nostdin", "-v", "error", "-threads", str(threads), "-ss", f"{s['start']}", "-to",
                        f"{s['end']}", "-i", str(s["path"]), "-an", "-f", "null", "-"], check=True)
    return time.perf_counter() - wall, _cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(REPO / "bench" / "_work" / "build"))
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--synthetic-seconds", type=float, default=240.0)
    parser.add_argument("--threads", type=int, default=1, help="decoder threads, both sides")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the fastest counts")
    args = parser.parse_args()
    work = Path(args.work)
    videos = work / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    sets = {"real (22 shared videos)": real_spans(Path(args.shared), videos),
            "synthetic 720p H.264": synthetic_spans(work, videos, args.synthetic_seconds)}

    results = []
    for name, spans in sets.items():
        seconds = sum(s["end"] - s["start"] for s in spans)
        best = {}
        for _ in range(args.repeat):
            # Alternate the two so machine load affects both alike.
            bare = run_bare(spans, args.threads)
            ours = run_lfvila(spans, videos, work / "out", args.threads)
            best["bare"] = min(best.get("bare", bare), bare)
            best["lfvila"] = min(best.get("lfvila", ours[:2]), ours[:2])
            totals = ours[2]
        row = {"inputs": name, "spans": len(spans), "video_seconds": round(seconds, 1),
               "frames_written": totals["frames"], "samples_written": totals["samples_written"],
               "bare_wall_s": round(best["bare"][0], 2), "bare_cpu_s": round(best["bare"][1], 2),
               "lfvila_wall_s": round(best["lfvila"][0], 2), "lfvila_cpu_s": round(best["lfvila"][1], 2)}
        row["bare_video_s_per_wall_s"] = round(seconds / row["bare_wall_s"], 1)
        row["lfvila_video_s_per_wall_s"] = round(seconds / row["lfvila_wall_s"], 1)
        row["bare_video_s_per_cpu_s"] = round(seconds / row["bare_cpu_s"], 1)
        row["lfvila_video_s_per_cpu_s"] = round(seconds / row["lfvila_cpu_s"], 1)
        row["wall_ratio"] = round(row["lfvila_wall_s"] / row["bare_wall_s"], 3)
        row["cpu_ratio"] = round(row["lfvila_cpu_s"] / row["bare_cpu_s"], 3)
        results.append(row)
        print(json.dumps(row), flush=True)

    print()
    print("| inputs | video s | bare ffmpeg: video s / wall s (/ CPU s) | lfvila: video s / wall s (/ CPU s) "
          "| lfvila / bare time, wall (CPU) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['inputs']} | {r['video_seconds']} | {r['bare_video_s_per_wall_s']} ({r['bare_video_s_per_cpu_s']})"
              f" | {r['lfvila_video_s_per_wall_s']} ({r['lfvila_video_s_per_cpu_s']})"
              f" | {r['wall_ratio']} ({r['cpu_ratio']}) |")
    (work / "build_throughput.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
