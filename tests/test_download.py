"""lfvila download on a loopback HTTP server serving real videos: statuses, reasons, bytes, resume, CLI."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lfvila.download.config import DownloadConfig
from lfvila.download.fixtures import RETRY_AFTER_S, LoopbackServer
from lfvila.download.run import download_videos, format_download_summary, select_requests

REPO = Path(__file__).resolve().parents[1]
VIDEOS = REPO.parent / "shared" / "data" / "videos"
REAL = {"cockatoo.mp4": "natural/python3-imageio__cockatoo.mp4", "pancake.mkv": "natural/decord__flipping_a_pancake.mkv",
        "sine.mp4": "bad/sfront__sine.mp4"}
VTT = b"WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nhello there\n"

pytestmark = pytest.mark.skipif(not VIDEOS.is_dir(), reason="../shared/data/videos not available")


@pytest.fixture(scope="module")
def server():
    files = {name: (VIDEOS / rel).read_bytes() for name, rel in REAL.items()}
    files["notes.mp4"] = b"this is a text file, not a video\n" * 50
    files["ok1.en.vtt"] = VTT
    with LoopbackServer(files, stall_s=3.0) as srv:
        yield srv


def _cfg(**kw) -> DownloadConfig:
    base = dict(stall_timeout_s=0.5, max_attempts=2, backoff_s=0.05, max_bytes=5_000_000, subtitles=["en"])
    return DownloadConfig(**{**base, **kw})


def _url_list(path: Path, rows: list[tuple[str, str]]) -> str:
    path.write_text("video_id,url\n" + "".join(f"{vid},{url}\n" for vid, url in rows))
    return f"urls:{path}"


def _rows(out: Path, stem: str = "download") -> dict[str, dict]:
    return {r["video_id"]: r for r in pq.read_table(out / f"{stem}.parquet").to_pylist()}


FAILURES = {  # video_id -> (server mode, file, expected reason)
    "nf": ("404", "cockatoo.mp4", "not_found"),
    "fb": ("403", "cockatoo.mp4", "forbidden"),
    "gone": ("410", "cockatoo.mp4", "removed"),
    "err": ("500", "cockatoo.mp4", "http_error"),
    "short": ("short", "cockatoo.mp4", "truncated"),
    "stall": ("stall", "cockatoo.mp4", "stalled"),
    "huge": ("huge", "cockatoo.mp4", "too_large"),
    "text": ("ok", "notes.mp4", "no_video_stream"),
    "sine": ("ok", "sine.mp4", "no_video_stream"),  # a real broken mp4 (no moov atom)
}


def test_statuses_reasons_and_byte_identical_files(tmp_path, server):
    rows = [("ok1", server.url("ok", "cockatoo.mp4")), ("ok2", server.url("ok", "pancake.mkv")),
            ("rl", server.url("429/1", "cockatoo.mp4")), ("nolen", server.url("nolength", "pancake.mkv"))]
    rows += [(vid, server.url(mode, name)) for vid, (mode, name, _) in FAILURES.items()]
    rows += [("../escape", server.url("ok", "cockatoo.mp4")), ("..", server.url("ok", "cockatoo.mp4"))]
    source = _url_list(tmp_path / "list.tsv", [])
    (tmp_path / "list.tsv").write_text("".join(f"{v}\t{u}\n" for v, u in rows))
    out = tmp_path / "videos"
    # A 2 s stall timeout (the server stalls 3 s): on a loaded machine a 0.5 s one could cut the
    # 429's successful retry short.
    totals = download_videos(_cfg(stall_timeout_s=2.0, subtitle_url_template=server.base + "/ok/{video_id}.{lang}.vtt"),
                             [source], out, workers=4, progress=False)
    got = _rows(out)
    assert totals["requested"] == len(got) == 4 + len(FAILURES) + 2
    assert totals["check_ok"] and totals["requested"] == totals["ok"] + totals["failed"]
    for vid, name in [("ok1", "cockatoo.mp4"), ("ok2", "pancake.mkv"), ("rl", "cockatoo.mp4"), ("nolen", "pancake.mkv")]:
        assert got[vid]["status"] == "ok", got[vid]
        assert (out / got[vid]["file"]).read_bytes() == (VIDEOS / REAL[name]).read_bytes()
        assert got[vid]["bytes"] == (VIDEOS / REAL[name]).stat().st_size
    assert got["ok1"]["file"] == "ok1.mp4" and got["ok2"]["file"] == "ok2.mkv"
    assert got["ok1"]["duration"] == pytest.approx(14.0) and "h264" in got["ok1"]["format"]
    assert (out / "ok1.en.vtt").read_bytes() == VTT and got["ok1"]["subtitles"] == ["en"]
    assert not (out / "ok2.en.vtt").exists() and got["ok2"]["subtitles"] == []  # no caption on the server
    for vid, (_, _, reason) in FAILURES.items():
        assert (got[vid]["status"], got[vid]["reason"]) == ("failed", reason), got[vid]
        assert not list(out.glob(f"{vid}.*")), f"{vid}: nothing may be left for a failed video"
    assert got["../escape"]["reason"] == got[".."]["reason"] == "unsafe_id"  # never turned into a path
    assert not (tmp_path / "escape.mp4").exists() and not (tmp_path / "escape.part").exists()
    # 429 then the file: the retry waited for Retry-After
    t = server.times["/429/1/cockatoo.mp4"]
    assert got["rl"]["attempts"] == 2 and t[1] - t[0] >= RETRY_AFTER_S - 0.05
    # transient failures were retried inside the run, permanent ones were not
    assert got["short"]["attempts"] == 2 and got["stall"]["attempts"] == 2 and got["err"]["attempts"] == 2
    assert got["nf"]["attempts"] == 1 and got["text"]["attempts"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith((".part", ".tmp", ".jsonl"))]
    on_disk = json.loads((out / "download.json").read_text())
    assert on_disk["ok"] == 4 and on_disk["failed_by_reason"]["no_video_stream"] == 2
    text = format_download_summary(totals)
    assert "OK: requested 15 == ok 4 + failed 11" in text and "stalled" in text


def test_max_bytes_is_enforced_while_reading(tmp_path, server):
    size = (VIDEOS / REAL["pancake.mkv"]).stat().st_size
    source = _url_list(tmp_path / "l.csv", [("big", server.url("nolength", "pancake.mkv"))])
    download_videos(_cfg(max_bytes=size - 1), [source], tmp_path / "v", workers=1, progress=False)
    row = _rows(tmp_path / "v")["big"]
    assert row["reason"] == "too_large" and "max_bytes" in row["detail"]


def test_rerun_skips_done_and_permanent_and_retry_failed_retries_them(tmp_path, server):
    rows = [("r_ok", server.url("ok", "pancake.mkv")), ("r_nf", server.url("404", "pancake.mkv")),
            ("r_short", server.url("short", "pancake.mkv"))]
    source = _url_list(tmp_path / "l.csv", rows)
    out = tmp_path / "v"
    first = download_videos(_cfg(max_attempts=1), [source], out, workers=2, progress=False)
    assert (first["ok"], first["failed"]) == (1, 2)
    before = dict(server.requests)
    mtime = (out / "r_ok.mkv").stat().st_mtime_ns
    second = download_videos(_cfg(max_attempts=1), [source], out, workers=2, progress=False)
    # ok and permanent (404) skipped; the transient one (truncated) retried
    assert server.requests["/ok/pancake.mkv"] == before["/ok/pancake.mkv"]
    assert server.requests["/404/pancake.mkv"] == before["/404/pancake.mkv"]
    assert server.requests["/short/pancake.mkv"] == before["/short/pancake.mkv"] + 1
    assert (second["skipped_ok"], second["skipped_failed"], second["attempted_this_run"]) == (1, 1, 1)
    assert _rows(out)["r_short"]["attempts"] == 2  # counted over runs
    assert (out / "r_ok.mkv").stat().st_mtime_ns == mtime
    download_videos(_cfg(max_attempts=1), [source], out, workers=2, retry_failed=True, progress=False)
    assert server.requests["/404/pancake.mkv"] == before["/404/pancake.mkv"] + 1
    assert server.requests["/ok/pancake.mkv"] == before["/ok/pancake.mkv"]
    # an ok row whose file was deleted is downloaded again
    (out / "r_ok.mkv").unlink()
    again = download_videos(_cfg(), [source], out, workers=1, progress=False)
    assert (out / "r_ok.mkv").is_file() and again["ok"] == 1


def test_kill_mid_download_leaves_no_complete_looking_file(tmp_path, server):
    out = tmp_path / "v"
    stalled = _url_list(tmp_path / "a.csv", [("k1", server.url("stall", "cockatoo.mp4"))])
    code = ("import sys; from pathlib import Path; from lfvila.download.config import DownloadConfig;"
            "from lfvila.download.run import download_videos;"
            f"download_videos(DownloadConfig(stall_timeout_s=30), [{stalled!r}], Path({str(out)!r}), progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 30
    while not (out / "k1.part" / "k1.mp4").exists() or (out / "k1.part" / "k1.mp4").stat().st_size == 0:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from lfvila.video.source import find_source

    assert find_source(out, "k1", []) is None  # the shard stage sees no video yet
    good = _url_list(tmp_path / "b.csv", [("k1", server.url("ok", "cockatoo.mp4"))])
    totals = download_videos(_cfg(), [good], out, workers=1, progress=False)
    assert totals["ok"] == 1 and not (out / "k1.part").exists()
    assert (out / "k1.mp4").read_bytes() == (VIDEOS / REAL["cockatoo.mp4"]).read_bytes()


def test_shard_ranges_partition_the_videos(tmp_path, server):
    ids = [f"vid{i:02d}" for i in range(12)]
    source = _url_list(tmp_path / "l.csv", [(v, server.url("404", "x")) for v in ids])
    parts = [select_requests(_cfg(), [source], (i, 3))[0] for i in range(3)]
    chosen = [r.video_id for part in parts for r in part]
    assert sorted(chosen) == ids and all(parts)
    assert [r.video_id for r in select_requests(_cfg(), [source], (1, 3))[0]] == [r.video_id for r in parts[1]]
    out = tmp_path / "v"
    for i in range(3):
        totals = download_videos(_cfg(), [source], out, shard_range=(i, 3), progress=False)
        assert totals["requested"] == len(parts[i])
    assert sorted(p.name for p in out.glob("download*.parquet")) == [f"download.{i}-of-3.parquet" for i in range(3)]
    # a later run without a range resumes from all parts: the permanent 404s are not requested again
    before = sum(server.requests.values())
    assert download_videos(_cfg(), [source], out, progress=False)["skipped_failed"] == 12
    assert sum(server.requests.values()) == before


def _hdvila_meta(path: Path, server, videos: dict[str, tuple[str, float]]) -> None:
    """HD-VILA-style metadata with a url per video and 2 s clips covering each video."""
    lines = []
    for vid, (name, seconds) in videos.items():
        clips = [{"clip_id": f"{vid}.{n}.mp4", "span": [f"00:00:{2 * n:06.3f}", f"00:00:{2 * n + 2:06.3f}"],
                  "text": f"sentence {n} of {vid}."} for n in range(int(seconds // 2))]
        lines.append(json.dumps({"video_id": vid, "url": server.url("ok", name), "clip": clips}))
    path.write_text("\n".join(lines) + "\n")


def test_download_then_build_shards_equals_videos_copied_by_hand(tmp_path, server):
    from lfvila.cli import main

    meta = tmp_path / "meta.jsonl"
    _hdvila_meta(meta, server, {"Cockatoo1": ("cockatoo.mp4", 14.0), "Pancake01": ("pancake.mkv", 10.381)})
    # a third video with no run: --manifest must skip it
    with open(meta, "a") as f:
        f.write(json.dumps({"video_id": "NoRuns", "url": server.url("ok", "cockatoo.mp4"),
                            "clip": [{"clip_id": "NoRuns.0.mp4", "span": ["00:00:00.000", "00:00:02.000"], "text": "x."}]}) + "\n")
    common = ["--set", "shards.samples_per_shard=1", "--set", "video.fps=1"]
    for corpus in ("by_download", "by_hand"):
        assert main(["build", "--out", str(tmp_path / corpus), "--source", f"hdvila:{meta}", "--stage", "manifest",
                     *common]) == 0
    videos = tmp_path / "videos"
    assert main(["download", "--source", f"hdvila:{meta}", "--out", str(videos), "--manifest",
                 str(tmp_path / "by_download"), "--no-progress", "--workers", "2"]) == 0
    rows = _rows(videos)
    assert sorted(rows) == ["Cockatoo1", "Pancake01"] and all(r["status"] == "ok" for r in rows.values())
    hand = tmp_path / "hand"
    hand.mkdir()
    shutil.copy(VIDEOS / REAL["cockatoo.mp4"], hand / "Cockatoo1.mp4")
    shutil.copy(VIDEOS / REAL["pancake.mkv"], hand / "Pancake01.mkv")
    for corpus, folder in (("by_download", videos), ("by_hand", hand)):
        assert main(["build", "--out", str(tmp_path / corpus), "--stage", "shards", "--videos", str(folder),
                     "--workers", "1", *common]) == 0
    tars = sorted((tmp_path / "by_hand" / "shards").glob("*.tar"))
    assert len(tars) >= 2
    for tar in tars:
        assert (tmp_path / "by_download" / "shards" / tar.name).read_bytes() == tar.read_bytes()
    index = pq.read_table(tmp_path / "by_download" / "shards" / "index.parquet").to_pylist()
    assert sorted({r["key"].split("~")[1] for r in index}) == ["Cockatoo1", "Pancake01"]


def test_cli_exits_non_zero_when_nothing_downloads(tmp_path, server, capsys):
    from lfvila.cli import main

    source = _url_list(tmp_path / "l.csv", [("x1", server.url("404", "a")), ("x2", server.url("403", "cockatoo.mp4"))])
    assert main(["download", "--source", source, "--out", str(tmp_path / "v"), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "failed, not_found (permanent): 1" in out and "OK: requested 2 == ok 0 + failed 2" in out


def test_ytdlp_backend_downloads_a_direct_file_on_loopback(tmp_path, server):
    """yt-dlp's generic extractor, the YouTube path's downloader, on a direct mp4 link."""
    source = _url_list(tmp_path / "l.csv", [("y_ok", server.url("ok", "cockatoo.mp4")),
                                             ("y_nf", server.url("404", "cockatoo.mp4"))])
    totals = download_videos(_cfg(backend="ytdlp", max_attempts=1), [source], tmp_path / "v", workers=2, progress=False)
    rows = _rows(tmp_path / "v")
    assert totals["ok"] == 1 and rows["y_nf"]["reason"] == "not_found"
    assert (tmp_path / "v" / "y_ok.mp4").read_bytes() == (VIDEOS / REAL["cockatoo.mp4"]).read_bytes()


def test_sections_runs_then_build_matches_the_full_video(tmp_path):
    """download.sections: runs with --manifest: only the runs' ranges, read by the shard stage in source seconds."""
    from lfvila.cli import main
    from lfvila.shards.fixtures import make_colour_video, sentences_every, write_longform
    from lfvila.shards.read import iter_samples

    clock = make_colour_video(tmp_path / "clock.mp4", 40, fps=25, size="160x120",
                              codec=["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "25",
                                     "-movflags", "+faststart"])
    rows = [{"key": "k000", "video_id": "clockA", "sentences": sentences_every(21.0, 27.0, 2.0, "clockA")},
            {"key": "k001", "video_id": "clockA", "sentences": sentences_every(30.5, 34.5, 2.0, "clockA")}]
    for corpus in ("by_sections", "by_full"):
        write_longform(tmp_path / corpus / "longform.parquet", rows)
    with LoopbackServer({"clock.mp4": clock.read_bytes()}) as srv:
        source = _url_list(tmp_path / "l.csv", [("clockA", srv.url("ok", "clock.mp4")), ("other", srv.url("ok", "x"))])
        videos = tmp_path / "videos"
        assert main(["download", "--source", source, "--out", str(videos), "--manifest", str(tmp_path / "by_sections"),
                     "--set", "download.sections=runs", "--set", "download.section_margin_s=1", "--no-progress"]) == 0
    row = _rows(videos)["clockA"]
    assert row["status"] == "ok" and row["file"] == "clockA/sections.json" and row["format"] == "1 sections"
    assert 0 < row["bytes"] < clock.stat().st_size / 2  # ranges 20-35.5 s of 40 s, merged (gap 3.5 s < 10 s)
    assert set(_rows(videos)) == {"clockA"}  # "other" has no run
    full = tmp_path / "full"
    full.mkdir()
    shutil.copy(clock, full / "clockA.mp4")
    for corpus, folder in (("by_sections", videos), ("by_full", full)):
        assert main(["build", "--out", str(tmp_path / corpus), "--stage", "shards", "--videos", str(folder),
                     "--workers", "1", "--set", "video.fps=1"]) == 0
    got = {}
    for corpus in ("by_sections", "by_full"):
        tars = sorted((tmp_path / corpus / "shards").glob("*.tar"))
        got[corpus] = {s["key"]: s["meta"] for t in tars for s in iter_samples(t)}
    assert sorted(got["by_sections"]) == sorted(got["by_full"]) == ["k000", "k001"]
    for key, meta in got["by_full"].items():
        mine = got["by_sections"][key]
        assert mine["frame_times"] == meta["frame_times"] and mine["sentences"] == meta["sentences"]


def test_ctrl_c_in_download_says_how_to_continue_without_a_traceback(tmp_path, server):
    urls = _url_list(tmp_path / "a.csv", [("c1", server.url("stall", "cockatoo.mp4"))])
    out = tmp_path / "v"
    proc = subprocess.Popen([sys.executable, "-m", "lfvila.cli", "download", "--source", urls, "--out", str(out),
                             "--workers", "1", "--no-progress", "--set", "download.stall_timeout_s=2"],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (out / "c1.part").exists():  # inside the download
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "lfvila download: interrupted." in stderr and "Run the same command again" in stderr
    assert "Traceback" not in stderr and not (out / "c1.mp4").exists()


def test_sections_through_ytdlp_resolve_equal_the_direct_http_cut(tmp_path):
    """YouTube-style URLs in sections mode: yt-dlp resolves the format's direct URL (here its generic
    extractor on loopback), ffmpeg cuts the same ranges from it: the same sections as the HTTP path."""
    from lfvila.shards.fixtures import make_colour_video, sentences_every, write_longform

    clock = make_colour_video(tmp_path / "clock.mp4", 30, fps=25, size="160x120",
                              codec=["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "25",
                                     "-movflags", "+faststart"])
    write_longform(tmp_path / "corpus" / "longform.parquet",
                   [{"key": "k0", "video_id": "clk", "sentences": sentences_every(12.0, 18.0, 2.0, "clk")}])
    got = {}
    with LoopbackServer({"clock.mp4": clock.read_bytes(), "clk.en.vtt": VTT}) as srv:
        source = _url_list(tmp_path / "l.csv", [("clk", srv.url("ok", "clock.mp4"))])
        for backend in ("http", "ytdlp"):
            cfg = _cfg(backend=backend, sections="runs", section_margin_s=1.0,
                       subtitle_url_template=srv.base + "/ok/{video_id}.{lang}.vtt")
            totals = download_videos(cfg, [source], tmp_path / backend, manifest=tmp_path / "corpus", progress=False)
            assert totals["ok"] == 1, _rows(tmp_path / backend)
            got[backend] = _rows(tmp_path / backend)["clk"]
    assert got["ytdlp"]["format"] == "1 sections of yt-dlp format mp4" and got["http"]["format"] == "1 sections"
    assert got["ytdlp"]["bytes"] == got["http"]["bytes"] < clock.stat().st_size / 2
    assert got["ytdlp"]["subtitles"] == ["en"]
    assert (tmp_path / "ytdlp" / "clk" / "sections.json").read_bytes() == (tmp_path / "http" / "clk" / "sections.json").read_bytes()
    assert (tmp_path / "ytdlp" / "clk" / "000.mp4").read_bytes() == (tmp_path / "http" / "clk" / "000.mp4").read_bytes()


def test_ytdlp_backend_honours_retry_after(tmp_path, server):
    """A 429 seen through yt-dlp carries the response: its Retry-After (1 s) sets the wait, not the backoff."""
    source = _url_list(tmp_path / "l.csv", [("y_rl", server.url("429/1", "pancake.mkv"))])
    totals = download_videos(_cfg(backend="ytdlp", backoff_s=0.01), [source], tmp_path / "v", progress=False)
    assert totals["ok"] == 1 and _rows(tmp_path / "v")["y_rl"]["attempts"] == 2
    times = server.times["/429/1/pancake.mkv"]
    assert len(times) >= 2 and times[1] - times[0] >= RETRY_AFTER_S * 0.95
