"""Shard storage: bytes per video-second of lfvila's JPEG frames vs the same spans as 3-fps H.264.

For each good real video of ../shared/data/videos (10 % to 90 % of its duration, as
bench/build_throughput.py) the script builds lfvila shards with the default video config (3 fps,
240 px high, JPEG quality 90) and encodes the same span with ffmpeg/libx264 at the same frame rate
and size (the released LF-VILA stores 3-fps re-encoded clips), at a few CRF / keyframe-interval
settings. It reports, per setting, the stored bytes per video-second (frames only, and whole tars
for lfvila), their ratio to JPEG, the CPU seconds to encode, and a projection for LF-VILA-8M.

    .venv/bin/python bench/shard_storage.py [--work DIR]

The LF-VILA-8M projection multiplies by a stated number of video-hours (``--corpus-hours``); the
default is a lower bound: 8,523,237 long-form videos of at least 4 clips of 13.4 s on average
(HD-VILA-100M's mean clip length) = 126,900 hours. Real runs are longer than 4 clips, so real
totals are larger in proportion.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from build_throughput import real_spans  # noqa: E402

from lfvila.build_config import BuildConfig  # noqa: E402
from lfvila.config import load_config  # noqa: E402
from lfvila.shards.build import build_shards  # noqa: E402
from lfvila.shards.fixtures import sentences_every, write_longform  # noqa: E402
from lfvila.video.decode import ffmpeg_exe  # noqa: E402

LFVILA_8M_VIDEOS = 8_523_237
MIN_CLIPS, MEAN_CLIP_S = 4, 13.4
# (name, extra libx264 arguments): x264's defaults (CRF 23, keyframe every 250 frames), a higher
# quality, and a keyframe every 4 s at 3 fps so that a loader can seek near any sampled frame.
H264_SETTINGS = [
    ("h264 crf23", ["-crf", "23"]),
    ("h264 crf18", ["-crf", "18"]),
    ("h264 crf23 g12", ["-crf", "23", "-g", "12"]),
]


def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def lfvila_bytes(spans: list[dict], videos: Path, out: Path) -> dict:
    """Build one sample per span; bytes of its JPEG frames, of whole tars, frames and CPU seconds."""
    shutil.rmtree(out, ignore_errors=True)
    rows = []
    for i, s in enumerate(spans):
        length = s["end"] - s["start"]
        step = length / max(1, round(length / 8.0))
        rows.append({"key": f"s{i:04d}", "video_id": s["video_id"],
                     "sentences": sentences_every(s["start"], s["end"], step, s["video_id"])})
    write_longform(out / "longform.parquet", rows)
    cfg = load_config(BuildConfig, None, ["shards.samples_per_shard=1000"])
    cpu = _cpu_seconds()
    totals = build_shards(cfg, out, videos, workers=1)["totals"]
    cpu = _cpu_seconds() - cpu
    frame_bytes = tar_bytes = 0
    for tar_path in sorted((out / "shards").rglob("*.tar")):
        tar_bytes += tar_path.stat().st_size
        with tarfile.open(tar_path) as tar:
            frame_bytes += sum(m.size for m in tar.getmembers() if m.name.endswith(".jpg"))
    return {"frames": totals["frames"], "samples": totals["samples_written"], "frame_bytes": frame_bytes,
            "tar_bytes": tar_bytes, "cpu_s": cpu, "height": cfg.video.frame_height, "fps": cfg.video.fps}


def raw_frames(span: dict, work: Path, fps: float, height: int) -> Path:
    """The span's frames at ``fps`` and ``height`` as full-range YUV 4:2:0 (what lfvila JPEG-encodes), y4m."""
    dest = work / f"{span['video_id']}.y4m"
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-threads", "1", "-ss", f"{span['start']}",
                    "-to", f"{span['end']}", "-i", str(span["path"]), "-an",
                    "-vf", f"fps={fps},scale=-2:{height},format=yuvj420p", "-strict", "-1", str(dest)], check=True)
    return dest


def read_y4m(path: Path):
    """Yield (y, u, v) uint8 planes of a 4:2:0 y4m file."""
    data = path.read_bytes()
    header, _, rest = data.partition(b"\n")
    fields = {f[:1]: f[1:] for f in header.split()[1:]}
    w, h = int(fields[b"W"]), int(fields[b"H"])
    size = w * h + 2 * ((w + 1) // 2) * ((h + 1) // 2)
    pos = 0
    while pos < len(rest):
        pos = rest.index(b"\n", pos) + 1  # "FRAME[ params]\n"
        frame = np.frombuffer(rest, np.uint8, size, pos)
        pos += size
        cw, ch = (w + 1) // 2, (h + 1) // 2
        yield (frame[:w * h].reshape(h, w), frame[w * h:w * h + cw * ch].reshape(ch, cw),
               frame[w * h + cw * ch:].reshape(ch, cw))


def psnr(ref: np.ndarray, got: np.ndarray) -> float:
    mse = float(np.mean((ref.astype(np.float64) - got.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def jpeg_of(raw: list[Path], quality: int) -> dict:
    """JPEG as lfvila writes it (simplejpeg from the YUV planes): bytes, luma PSNR, CPU seconds."""
    import io

    import simplejpeg
    from PIL import Image

    total, scores, cpu, per_path = 0, [], 0.0, {}
    for path in raw:
        for y, u, v in read_y4m(path):
            t = time.process_time()
            jpeg = simplejpeg.encode_jpeg_yuv_planes(np.ascontiguousarray(y), np.ascontiguousarray(u),
                                                     np.ascontiguousarray(v), quality=quality)
            cpu += time.process_time() - t
            total += len(jpeg)
            per_path[path.stem] = per_path.get(path.stem, 0) + len(jpeg)
            image = Image.open(io.BytesIO(jpeg))
            image.draft("YCbCr", image.size)  # libjpeg's own decoded Y, no round trip through RGB
            scores.append(psnr(y, np.asarray(image)[:, :, 0]))
    return {"bytes": total, "psnr_y": float(np.mean(scores)), "cpu_s": cpu, "per_path": per_path}


def h264_of(raw: list[Path], work: Path, extra: list[str]) -> dict:
    """The same frames as H.264 (libx264, preset medium): bytes, luma PSNR, CPU seconds to encode."""
    import av

    work.mkdir(parents=True, exist_ok=True)
    total, scores, cpu, per_path = 0, [], 0.0, {}
    for path in raw:
        dest = work / f"{path.stem}.mp4"
        t = _cpu_seconds()
        subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-threads", "1", "-i", str(path),
                        "-c:v", "libx264", "-preset", "medium", "-x264-params", "threads=1", *extra,
                        "-movflags", "+faststart", str(dest)], check=True)
        cpu += _cpu_seconds() - t
        total += dest.stat().st_size
        per_path[path.stem] = dest.stat().st_size
        with av.open(str(dest)) as container:
            decoded = [np.frombuffer(bytes(f.planes[0]), np.uint8).reshape(f.height, -1)[:, :f.width]
                       for f in container.decode(video=0)]
        refs = [y for y, _, _ in read_y4m(path)]
        assert len(decoded) == len(refs), (path, len(decoded), len(refs))
        scores += [psnr(r, d) for r, d in zip(refs, decoded)]
    return {"bytes": total, "psnr_y": float(np.mean(scores)), "cpu_s": cpu, "per_path": per_path}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(REPO / "bench" / "_work" / "storage"))
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--corpus-hours", type=float, default=LFVILA_8M_VIDEOS * MIN_CLIPS * MEAN_CLIP_S / 3600,
                        help="video-hours to project the totals to (default: the LF-VILA-8M lower bound)")
    args = parser.parse_args()
    work = Path(args.work)
    videos = work / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    spans = real_spans(Path(args.shared), videos)
    seconds = sum(s["end"] - s["start"] for s in spans)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())

    ours = lfvila_bytes(spans, videos, work / "out")
    raw_dir = work / "raw"
    raw_dir.mkdir(exist_ok=True)
    raw, raw_seconds = [], 0.0
    for span in spans:
        path = raw_frames(span, raw_dir, ours["fps"], ours["height"])
        if next(read_y4m(path), None) is not None:  # ffmpeg got no frame from a damaged file: left out
            raw.append(path)
            raw_seconds += span["end"] - span["start"]
    same_frames = {"jpeg q90 (as lfvila encodes)": jpeg_of(raw, 90)}
    for name, extra in H264_SETTINGS:
        same_frames[name] = h264_of(raw, work / name.replace(" ", "_"), extra)
    n_raw = sum(1 for p in raw for _ in read_y4m(p))
    print(json.dumps({"started": started, "spans": len(spans), "video_seconds": round(seconds, 1),
                      "lfvila_frames": ours["frames"], "same_frames": n_raw, "samples": ours["samples"]}))
    print(f"\n{len(spans)} spans, {seconds:.1f} video-seconds at {ours['fps']:g} fps, {ours['height']} px high; "
          f"projection to {args.corpus_hours:,.0f} video-hours\n")

    def tb(size: int, seconds: float = seconds) -> str:
        return f"{size / seconds * args.corpus_hours * 3600 / 1e12:.1f}"

    print(f"lfvila shards ({ours['frames']} frames): JPEG frames {ours['frame_bytes'] / seconds:,.0f} B per video-s, "
          f"whole tars {ours['tar_bytes'] / seconds:,.0f} B per video-s ({tb(ours['tar_bytes'])} TB projected)\n")
    base = same_frames["jpeg q90 (as lfvila encodes)"]["bytes"]
    print(f"The same {n_raw} frames (ffmpeg fps + scale) of {len(raw)} spans, {raw_seconds:.1f} video-seconds, "
          "each way:\n")
    print("| stored as | bytes per video-second | vs JPEG | luma PSNR dB | encode CPU s | projected TB |")
    print("|---|---|---|---|---|---|")
    for name, got in same_frames.items():
        print(f"| {name} | {got['bytes'] / raw_seconds:,.0f} | {got['bytes'] / base:.3f} | {got['psnr_y']:.2f} | "
              f"{got['cpu_s']:.1f} | {tb(got['bytes'], raw_seconds)} |")
    print("\nBytes vs JPEG by kind of footage (camera footage is closer to YouTube than screen captures):\n")
    print("| kind | spans | " + " | ".join(same_frames) + " |")
    print("|---|---|" + "---|" * len(same_frames))
    for kind in ("natural", "rendered"):
        stems = [p.stem for p in raw if p.stem.startswith(kind + "__")]
        sizes = [sum(got["per_path"][st] for st in stems) for got in same_frames.values()]
        print(f"| {kind} | {len(stems)} | " + " | ".join(f"{x / sizes[0]:.3f}" for x in sizes) + " |")


if __name__ == "__main__":
    main()
