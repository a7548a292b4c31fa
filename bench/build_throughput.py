"""Shard-build throughput: lfvila's frame pipeline vs a bare ffmpeg decode of the same spans, side by side.

Measures source-video seconds processed per wall-clock second and per CPU second (this process plus
its ffmpeg children), one core: lfvila runs with ``workers=1`` and ``video.decoder_threads=1``, the
bare decode is ``ffmpeg -threads 1 -ss S -to E -i V -an -f null -`` per span (the practical floor: it
decodes every frame and does nothing with it). Inputs: the real videos of ../shared/data/videos
(natural and rendered; bad/ excluded) and a synthetic 720p H.264 video made with ffmpeg.

    .venv/bin/python bench/build_throughput.py [--synthetic-seconds 240] [--repeat 2]
        [--video2dataset-python /tmp/v2d-venv/bin/python [--video2dataset-repeat 1]]

With ``--video2dataset-python`` (the python of the venv bench/video2dataset_env.sh makes), video2dataset
1.3.0 runs on the real spans too, alternating with the other two: bench/video2dataset_run.py, precise
clips (``precision="exact"``: re-encoded, not stream-copied), 240 px high, 3 fps, webdataset output, one
process and one sample thread; its CPU is that of the whole process tree (``os.wait4``). A run on no
video at all measures its fixed start-up (interpreters and imports), and its output is compared with
lfvila's (frame counts and times, clip durations). Without the flag, or if that python is absent, it is
skipped.
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


def _v2d_tree(python: str, spans: list[dict], out: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one video2dataset run on ``spans`` (its whole process tree, reaped by wait4)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "spans.json").write_text(json.dumps([{k: str(v) if k == "path" else v for k, v in s.items()}
                                                for s in spans]))
    env = dict(os.environ, PATH=f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [python, str(REPO / "bench" / "video2dataset_run.py"), "--spans", str(out / "spans.json"), "--out", str(out)]
    wall = time.perf_counter()
    with open(out / "log.txt", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - wall
    if proc.returncode != 0:
        raise RuntimeError(f"video2dataset run failed ({proc.returncode}); see {out / 'log.txt'}")
    return wall, usage.ru_utime + usage.ru_stime


def v2d_spans(spans: list[dict], work: Path) -> list[dict]:
    """The spans with each video linked as ``ID.mp4``: video2dataset takes a local file only when its name
    ends in .mp4/.webm/.mov/.avi/.mkv (others go to yt-dlp as URLs), and writes every input as input.mp4
    whatever its name, so the name changes nothing else."""
    links = work / "v2d_videos"
    links.mkdir(parents=True, exist_ok=True)
    out = []
    for s in spans:
        link = links / f"{s['video_id']}.mp4"
        if not link.exists():
            os.symlink(Path(s["path"]).resolve(), link)
        out.append({**s, "path": link})
    return out


def run_v2d(python: str, spans: list[dict], out: Path) -> tuple[float, float, int]:
    """Wall and CPU seconds of video2dataset on ``spans``, and how many samples it wrote (its failures are
    in its shards' parquet, ``status`` and ``error_message``, and listed by compare_outputs)."""
    wall, cpu = _v2d_tree(python, spans, out)
    ok = sum(json.loads(p.read_text())["successes"] for p in (out / "dataset").glob("*_stats.json"))
    if ok != len(spans):
        print(f"video2dataset wrote {ok} of {len(spans)} samples; see {out / 'log.txt'}", flush=True)
    return wall, cpu, ok


def _tar_members(tar_path: Path, suffix: str) -> dict[str, bytes]:
    import tarfile

    with tarfile.open(tar_path) as tf:
        return {m.name[: -len(suffix)]: tf.extractfile(m).read() for m in tf if m.name.endswith(suffix)}


def compare_outputs(spans: list[dict], lf_out: Path, v2d_out: Path) -> dict:
    """What differs between the two outputs of the same spans: frames and their times, clip durations."""
    import io

    import av

    lf = {}
    for tar in sorted((lf_out / "shards").rglob("*.tar")):
        for key, raw in _tar_members(tar, ".json").items():
            lf[key] = json.loads(raw)
    v2d, failed = {}, {}
    for tar in sorted((v2d_out / "dataset").glob("*.tar")):
        metas = {k: json.loads(raw) for k, raw in _tar_members(tar, ".json").items()}
        mp4s = _tar_members(tar, ".mp4")
        for key, meta in metas.items():
            if key in mp4s:
                v2d[meta["url"]] = (meta, mp4s[key])
            else:
                failed[meta["url"]] = f"{meta.get('status')}: {meta.get('error_message')}"
    rows = []
    for i, s in enumerate(spans):
        times = next(m for m in lf.values() if m["key"] == f"s{i:04d}")["frame_times"]
        if str(s["path"]) not in v2d:
            rows.append({"video_id": s["video_id"], "span_s": round(s["end"] - s["start"], 3),
                         "lfvila_frames": len(times), "v2d_frames": None,
                         "v2d_failed": failed.get(str(s["path"]), "no sample")})
            continue
        meta, mp4 = v2d[str(s["path"])]
        with av.open(io.BytesIO(mp4)) as c:
            st = c.streams.video[0]
            pts = [float(f.time) for f in c.decode(st)]
            fmt, codec, size = c.format.name, st.codec_context.name, (st.codec_context.width, st.codec_context.height)
            clip_s = float(c.duration) / 1e6 if c.duration else None
        rows.append({"video_id": s["video_id"], "span_s": round(s["end"] - s["start"], 3),
                     "lfvila_frames": len(times), "v2d_frames": len(pts),
                     "lfvila_first_s": round(times[0] - s["start"], 3) if times else None,
                     "v2d_first_s": round(pts[0], 3) if pts else None,
                     "v2d_last_s": round(pts[-1], 3) if pts else None,
                     "v2d_clip_s": round(clip_s, 3) if clip_s else None,
                     "v2d_format": fmt, "v2d_codec": codec, "v2d_size": size, "v2d_clips_meta": meta.get("clips")})
    done = [r for r in rows if r["v2d_frames"] is not None]
    diffs = [r["v2d_frames"] - r["lfvila_frames"] for r in done] or [0]
    return {"spans": rows, "v2d_failed": len(rows) - len(done),
            "lfvila_frames": sum(r["lfvila_frames"] for r in done), "v2d_frames": sum(r["v2d_frames"] for r in done),
            "spans_with_other_frame_count": sum(d != 0 for d in diffs),
            "frame_count_diff_min_max": [min(diffs), max(diffs)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(REPO / "bench" / "_work" / "build"))
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--synthetic-seconds", type=float, default=240.0)
    parser.add_argument("--threads", type=int, default=1, help="decoder threads, both sides")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the fastest counts")
    parser.add_argument("--video2dataset-python", metavar="PATH",
                        help="python of a venv with video2dataset 1.3.0 (bench/video2dataset_env.sh): run it too, "
                             "on the real spans")
    parser.add_argument("--video2dataset-repeat", type=int, default=1,
                        help="video2dataset runs (in the first N rounds; it is slow); the fastest counts")
    args = parser.parse_args()
    v2d_python = args.video2dataset_python
    if v2d_python and not os.access(v2d_python, os.X_OK):
        print(f"video2dataset skipped: {v2d_python} is not an executable python", flush=True)
        v2d_python = None
    work = Path(args.work)
    videos = work / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    sets = {"real (22 shared videos)": real_spans(Path(args.shared), videos),
            "synthetic 720p H.264": synthetic_spans(work, videos, args.synthetic_seconds)}

    results, v2d_rows = [], []
    if v2d_python:
        startup = _v2d_tree(v2d_python, [], work / "v2d_empty")  # start-up alone: no video
        print(json.dumps({"video2dataset_startup_wall_s": round(startup[0], 2),
                          "video2dataset_startup_cpu_s": round(startup[1], 2)}), flush=True)
    for name, spans in sets.items():
        seconds = sum(s["end"] - s["start"] for s in spans)
        with_v2d = v2d_python is not None and name.startswith("real")
        best = {}
        for round_ in range(max(args.repeat, args.video2dataset_repeat if with_v2d else 0)):
            # Alternate them so machine load affects all alike.
            bare = run_bare(spans, args.threads)
            ours = run_lfvila(spans, videos, work / "out", args.threads)
            best["bare"] = min(best.get("bare", bare), bare)
            best["lfvila"] = min(best.get("lfvila", ours[:2]), ours[:2])
            totals = ours[2]
            if with_v2d and round_ < args.video2dataset_repeat:
                theirs = run_v2d(v2d_python, v2d_spans(spans, work), work / "v2d_out")
                best["v2d"] = min(best.get("v2d", theirs), theirs)  # (wall, cpu, samples written)
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
        if with_v2d:
            v = {"inputs": name, "video_seconds": row["video_seconds"], "v2d_wall_s": round(best["v2d"][0], 2),
                 "v2d_cpu_s": round(best["v2d"][1], 2), "v2d_samples_written": best["v2d"][2],
                 "v2d_startup_cpu_s": round(startup[1], 2),
                 "lfvila_cpu_s": row["lfvila_cpu_s"], "bare_cpu_s": row["bare_cpu_s"]}
            # Rates per second of the spans it wrote (those it fails stop at their first frame: next to no CPU).
            v["outputs"] = compare_outputs(v2d_spans(spans, work), work / "out", work / "v2d_out")
            done = sum(r["span_s"] for r in v["outputs"]["spans"] if r["v2d_frames"] is not None)
            v["v2d_video_seconds"] = round(done, 1)
            v["v2d_video_s_per_cpu_s"] = round(done / v["v2d_cpu_s"], 2)
            v["v2d_video_s_per_cpu_s_less_startup"] = round(done / (v["v2d_cpu_s"] - startup[1]), 2)
            v["lfvila_video_s_per_cpu_s"] = row["lfvila_video_s_per_cpu_s"]
            v["v2d_over_lfvila_cpu_per_video_s"] = round(
                row["lfvila_video_s_per_cpu_s"] / v["v2d_video_s_per_cpu_s"], 1)
            v["v2d_less_startup_over_lfvila_cpu_per_video_s"] = round(
                row["lfvila_video_s_per_cpu_s"] / v["v2d_video_s_per_cpu_s_less_startup"], 1)
            v2d_rows.append(v)
            print(json.dumps({k: x for k, x in v.items() if k != "outputs"}), flush=True)

    print()
    print("| inputs | video s | bare ffmpeg: video s / wall s (/ CPU s) | lfvila: video s / wall s (/ CPU s) "
          "| lfvila / bare time, wall (CPU) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['inputs']} | {r['video_seconds']} | {r['bare_video_s_per_wall_s']} ({r['bare_video_s_per_cpu_s']})"
              f" | {r['lfvila_video_s_per_wall_s']} ({r['lfvila_video_s_per_cpu_s']})"
              f" | {r['wall_ratio']} ({r['cpu_ratio']}) |")
    for v in v2d_rows:
        o = v["outputs"]
        print(f"\nvideo2dataset 1.3.0 on {v['inputs']}: {v['v2d_video_s_per_cpu_s']} video s / CPU s "
              f"({v['v2d_video_s_per_cpu_s_less_startup']} less its {v['v2d_startup_cpu_s']} CPU s start-up); "
              f"{v['v2d_over_lfvila_cpu_per_video_s']}x lfvila's CPU per video s "
              f"({v['v2d_less_startup_over_lfvila_cpu_per_video_s']}x less start-up); "
              f"{o['v2d_failed']} spans failed; on the others, frames {o['v2d_frames']} vs lfvila "
              f"{o['lfvila_frames']}, "
              f"{o['spans_with_other_frame_count']} spans differ ({o['frame_count_diff_min_max']})")
    (work / "build_throughput.json").write_text(json.dumps(results, indent=1) + "\n")
    if v2d_rows:
        (work / "video2dataset.json").write_text(json.dumps(v2d_rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
