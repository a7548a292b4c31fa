"""Bytes and time per video of ``lfvila download`` on a loopback HTTP server (no internet).

Serves every readable video of ``../shared/data/videos/{natural,rendered}`` and downloads them
with the plain-HTTP backend and with yt-dlp's generic extractor, then prints per-backend totals:
videos, MB, seconds, ms per video, MB/s. Loopback removes the network: the figures are the
tool's own overhead (HTTP client, probe, rename, accounting), not what a real link gives.

  PYTHONPATH=$PWD python bench/download_loopback.py [--workers 4] [--backends http,ytdlp]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from lfvila.download.config import DownloadConfig
from lfvila.download.fixtures import LoopbackServer
from lfvila.download.run import download_videos

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--backends", default="http,ytdlp")
    args = parser.parse_args()
    paths = sorted(p for sub in ("natural", "rendered") for p in (DATA / sub).iterdir())
    files = {f"v{i:02d}{p.suffix}": p.read_bytes() for i, p in enumerate(paths)}
    total_mb = sum(len(b) for b in files.values()) / 1e6
    print(f"{len(files)} videos, {total_mb:.1f} MB, workers {args.workers}")
    with LoopbackServer(files) as server, tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "urls.csv"
        listing.write_text("".join(f"{name.split('.')[0]},{server.url('ok', name)}\n" for name in files))
        for backend in args.backends.split(","):
            out = Path(tmp) / backend
            t0 = time.perf_counter()
            totals = download_videos(DownloadConfig(backend=backend, subtitles=[]), [f"urls:{listing}"], out,
                                     workers=args.workers, progress=False)
            seconds = time.perf_counter() - t0
            n = totals["ok"]
            print(f"{backend:>6}: ok {n}/{totals['requested']}, {totals['bytes'] / 1e6:.1f} MB in {seconds:.2f} s: "
                  f"{1000 * seconds / max(n, 1):.0f} ms/video, {totals['bytes'] / 1e6 / seconds:.1f} MB/s, "
                  f"failed {totals['failed_by_reason']}")
            shutil.rmtree(out)


if __name__ == "__main__":
    main()
