"""lfvila download --engine ray: a real local Ray runs the downloads; same rows and bytes as threads."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lfvila.download.config import DownloadConfig
from lfvila.download.fixtures import LoopbackServer
from lfvila.download.run import HostPacer, download_videos

REPO = Path(__file__).resolve().parents[1]
VIDEOS = REPO.parent / "shared" / "data" / "videos"
REAL = {"cockatoo.mp4": "natural/python3-imageio__cockatoo.mp4", "pancake.mkv": "natural/decord__flipping_a_pancake.mkv"}
VTT = b"WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nhello there\n"

pytestmark = pytest.mark.skipif(not VIDEOS.is_dir(), reason="../shared/data/videos not available")
COMPARED = ("video_id", "url", "status", "reason", "bytes", "duration", "format", "file", "subtitles")


def test_ray_engine_downloads_what_threads_download(tmp_path):
    files = {name: (VIDEOS / rel).read_bytes() for name, rel in REAL.items()}
    files["notes.mp4"] = b"not a video\n" * 100
    files["ok1.en.vtt"] = VTT
    with LoopbackServer(files, stall_s=3.0) as server:
        rows = [("ok1", server.url("ok", "cockatoo.mp4")), ("ok2", server.url("ok", "pancake.mkv")),
                ("rl", server.url("429/1", "cockatoo.mp4")),  # one 429 with Retry-After, then the file
                ("nf", server.url("404", "cockatoo.mp4")), ("text", server.url("ok", "notes.mp4")),
                ("../up", server.url("ok", "cockatoo.mp4"))]
        (tmp_path / "list.tsv").write_text("".join(f"{v}\t{u}\n" for v, u in rows))
        source = f"urls:{tmp_path / 'list.tsv'}"
        sets = {"stall_timeout_s": 1.0, "max_attempts": 2, "backoff_s": 0.05, "subtitles": ["en"],
                "subtitle_url_template": server.base + "/ok/{video_id}.{lang}.vtt"}
        threads = tmp_path / "threads"
        download_videos(DownloadConfig(**sets), [source], threads, workers=2, progress=False)

        on_ray = tmp_path / "ray"
        args = [arg for key, value in sets.items() for arg in ("--set", f"download.{key}={json.dumps(value)}")]
        proc = subprocess.run([sys.executable, "-m", "lfvila.cli", "download", "--source", source, "--out", str(on_ray),
                               "--engine", "ray", "--workers", "2", "--no-progress", *args],
                              cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                              capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "OK: requested 6 == ok 3 + failed 3" in proc.stdout

    def table(out):
        return {r["video_id"]: {k: r[k] for k in COMPARED} for r in pq.read_table(out / "download.parquet").to_pylist()}

    assert table(on_ray) == table(threads)
    assert {v: r["reason"] for v, r in table(on_ray).items() if r["status"] == "failed"} == {
        "nf": "not_found", "text": "no_video_stream", "../up": "unsafe_id"}
    assert json.loads((on_ray / "download.json").read_text())["engine"] == "ray"
    for name in ("ok1.mp4", "ok2.mkv", "rl.mp4", "ok1.en.vtt"):
        assert (on_ray / name).read_bytes() == (threads / name).read_bytes(), name
    assert sorted(p.name for p in on_ray.iterdir()) == sorted(p.name for p in threads.iterdir())


def test_host_pacer_books_consecutive_slots_per_host():
    pacer = HostPacer(interval_s=10.0)
    assert pacer.reserve("a") == 0.0
    assert 9.0 < pacer.reserve("a") <= 10.0  # the next request to the same host waits one interval
    assert 19.0 < pacer.reserve("a") <= 20.0
    assert pacer.reserve("b") == 0.0  # other hosts are independent
    pacer.hold("b", 30.0)
    assert 29.0 < pacer.reserve("b") <= 30.0


CLUSTER_BODY = r"""
"$PYTHON" - <<'PY'
import json, os, sys
from pathlib import Path
import pyarrow.parquet as pq
import ray
from lfvila.download.config import DownloadConfig
from lfvila.download.fixtures import LoopbackServer
from lfvila.download.run import download_videos

videos, tmp = Path(os.environ["VIDEOS"]), Path(os.environ["TMP"])
files = {"a.mp4": (videos / "natural/python3-imageio__cockatoo.mp4").read_bytes(),
         "b.mkv": (videos / "natural/decord__flipping_a_pancake.mkv").read_bytes()}
with LoopbackServer(files) as server:
    ids = [f"v{i}" for i in range(8)]
    (tmp / "list.csv").write_text("".join(f"{v},{server.url('ok' if i % 4 else '404', 'a.mp4' if i % 2 else 'b.mkv')}\n"
                                          for i, v in enumerate(ids)))
    cfg = DownloadConfig(stall_timeout_s=2.0, max_attempts=2, backoff_s=0.05, subtitles=[])
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    print("RAY_NODES", len([n for n in ray.nodes() if n["Alive"]]))
    totals = download_videos(cfg, [f"urls:{tmp / 'list.csv'}"], tmp / "ray", workers=4, progress=False, engine="ray")
    ray.shutdown()
    download_videos(cfg, [f"urls:{tmp / 'list.csv'}"], tmp / "threads", workers=2, progress=False)
print("TOTALS", json.dumps({k: totals[k] for k in ("requested", "ok", "failed")}))
PY
"""


@pytest.mark.slow
def test_ray_engine_on_a_two_node_loopback_cluster(tmp_path):
    """Head and worker node in a network namespace with only loopback (lfvila.testing)."""
    from lfvila.testing import run_on_loopback_ray_cluster

    (tmp_path / "home").mkdir()
    proc = run_on_loopback_ray_cluster(CLUSTER_BODY, tmp_path / "home",
                                       {"TMP": str(tmp_path), "VIDEOS": str(VIDEOS), "PYTHONPATH": str(REPO)},
                                       port=6391, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "RAY_NODES 2" in proc.stdout
    assert 'TOTALS {"requested": 8, "ok": 6, "failed": 2}' in proc.stdout
    tables = [{r["video_id"]: (r["status"], r["reason"], r["file"]) for r in pq.read_table(tmp_path / d / "download.parquet").to_pylist()}
              for d in ("ray", "threads")]
    assert tables[0] == tables[1]
    for name in sorted(p.name for p in (tmp_path / "threads").glob("v*")):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "threads" / name).read_bytes(), name
