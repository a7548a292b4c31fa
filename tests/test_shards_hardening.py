"""Shard stage under hostile names and broken environments (issue 12, "Shard stage").

File names that ffmpeg would read as URLs or options, directories named like glob patterns, disk full
while writing a shard, a SIGKILLed driver, absurd sample aspect ratios. Real videos from
../shared/data where decoding matters.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from lfvila.build_config import BuildConfig
from lfvila.config import load_config
from lfvila.shards.build import build_shards
from lfvila.shards.fixtures import make_colour_video, sentences_every, write_longform
from lfvila.shards.read import iter_samples
from lfvila.video.decode import SegmentDecoder

REPO = Path(__file__).resolve().parents[1]
REAL_MP4 = "videos/rendered/forensics-samples-files__movie-hello.mp4"  # 1280x720 H.264: 426x240 frames


def _cfg(*overrides: str) -> BuildConfig:
    return load_config(BuildConfig, None, ["shards.samples_per_shard=2", *overrides])


def _samples(out: Path) -> list[dict]:
    return [s for tar in sorted((out / "shards").glob("*.tar")) for s in iter_samples(tar)]


def _luma(path: Path) -> list[bytes]:
    decoder = SegmentDecoder(path, 1.0, 3, 3.0, 240, None, 1, time.monotonic() + 120)
    frames = [frame.y.tobytes() for _, frame in decoder]
    assert not decoder.result.failed and not decoder.result.error_lines
    return frames


@pytest.mark.parametrize("name", ["concat:x.mp4", "-i.mp4", "a|b.mp4", "file:x.mp4"])
def test_a_file_name_is_never_read_as_a_url_or_an_option(tmp_path, monkeypatch, shared_data, name):
    """Relative names in the working directory (``--videos .``) decode the file itself, nothing else."""
    monkeypatch.chdir(tmp_path)
    make_colour_video(tmp_path / "x.mp4", 3)  # what ``concat:x.mp4`` or ``file:x.mp4`` would decode as a URL
    shutil.copy(shared_data / REAL_MP4, tmp_path / name)
    shutil.copy(shared_data / REAL_MP4, tmp_path / "plain.mp4")
    plain = _luma(Path("plain.mp4"))
    assert len(plain) == 3 and len(plain[0]) == 426 * 240
    assert _luma(Path(name)) == plain


def test_a_build_from_the_working_directory_reads_each_video_by_its_own_name(tmp_path, monkeypatch, shared_data):
    monkeypatch.chdir(tmp_path)
    make_colour_video(tmp_path / "x.mp4", 6)
    ids = ["concat:x", "-i", "a|b", "plain"]
    for video_id in ids:
        shutil.copy(shared_data / REAL_MP4, tmp_path / f"{video_id}.mp4")
    rows = [{"key": f"k{i}", "video_id": v, "sentences": sentences_every(1.0, 4.0, 1.0, v)} for i, v in enumerate(ids)]
    write_longform(tmp_path / "out" / "longform.parquet", rows)
    summary = build_shards(_cfg(), Path("out"), Path("."), workers=1)
    assert summary["totals"]["samples_written"] == 4, summary["totals"]["rejected_by_reason"]
    samples = _samples(tmp_path / "out")
    assert {s["meta"]["width"] for s in samples} == {426}
    assert len({tuple(s["frames"]) for s in samples}) == 1  # all four are the same real video's frames


def test_a_videos_directory_named_like_a_glob_pattern_is_found(tmp_path):
    videos = tmp_path / "dir[1]"
    videos.mkdir()
    make_colour_video(videos / "colour.mp4", 4)
    (tmp_path / "dir1").mkdir()  # what the unescaped pattern dir[1] would match instead
    write_longform(tmp_path / "out" / "longform.parquet",
                   [{"key": "k", "video_id": "colour", "split": "tr[a]in", "sentences": sentences_every(0, 3, 1, "colour")}])
    summary = build_shards(_cfg(), tmp_path / "out", videos, workers=1)
    assert summary["totals"]["samples_written"] == 1, summary["totals"]["rejected_by_reason"]
    # A split named like a pattern: the stale-temporary cleanup matches its own name literally.
    stale = tmp_path / "out" / "shards" / ".tr[a]in-000000.tar.0123.tmp"
    stale.write_bytes(b"left by a killed attempt")
    (tmp_path / "out" / "shards" / "tr[a]in-000000.stats.json").unlink()
    build_shards(_cfg(), tmp_path / "out", videos, workers=1)
    assert not stale.exists()


def test_download_tools_read_local_files_by_their_own_name(tmp_path, monkeypatch, shared_data):
    """The same for the download stage's ffmpeg cut and PyAV probes of a local file."""
    from lfvila.download.fetch import probe_video
    from lfvila.download.sections import cut_section

    monkeypatch.chdir(tmp_path)
    make_colour_video(tmp_path / "x.mp4", 3)
    shutil.copy(shared_data / REAL_MP4, tmp_path / "concat:x.mp4")
    assert probe_video(Path("concat:x.mp4"))[1].endswith("1280x720")
    entry = cut_section("concat:x.mp4", 2.0, 4.0, Path("cut"), "000.mp4")
    assert probe_video(Path("cut") / entry["file"])[1].endswith("1280x720")


# Disk full, for real: RLIMIT_FSIZE makes the OS refuse to grow any file past a size (EFBIG, once
# SIGXFSZ is ignored), as a full disk refuses with ENOSPC. The build runs in a child process so
# the limit (inherited by its ffmpeg processes) is its own.
LIMITED_BUILD = r"""
import resource, signal, sys
from pathlib import Path
from lfvila.build_config import BuildConfig
from lfvila.config import load_config
from lfvila.errors import TaskFailure
from lfvila.shards.build import build_shards

out, videos, limit = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
cfg = load_config(BuildConfig, None, ["shards.samples_per_shard=2"])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    build_shards(cfg, out, videos, workers=int(sys.argv[4]))
except TaskFailure as exc:
    print("TASKFAILURE", exc)
"""


def _shard_rows(videos: Path) -> list[dict]:
    """Shards of very different sizes: 1 or 2 samples of 1-6 s over a 640x360 real video."""
    rows = []
    for i, seconds in enumerate([1, 6, 2, 5, 1, 1]):
        rows.append({"key": f"k{i}", "video_id": "real", "sentences": sentences_every(0.5, 0.5 + seconds, 1.0, "real")})
    return rows


@pytest.mark.parametrize("workers", [1, 2])
def test_disk_full_fails_the_task_leaves_nothing_and_a_rerun_repairs(tmp_path, shared_data, workers):
    import subprocess
    import sys

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "real.webm").symlink_to(shared_data / "videos/natural/renpy-demo__oa4_launch.webm")
    reference, limited = tmp_path / "reference", tmp_path / "limited"
    for out in (reference, limited):
        write_longform(out / "longform.parquet", _shard_rows(videos))
    build_shards(_cfg(), reference, videos, workers=1)
    want = {p.name: p.read_bytes() for p in (reference / "shards").iterdir()}
    sizes = sorted(len(data) for name, data in want.items() if name.endswith(".tar"))
    limit = (sizes[0] + sizes[-1]) // 2  # the small shard(s) fit, the large one(s) do not
    assert max(len(d) for n, d in want.items() if not n.endswith(".tar")) < limit

    proc = subprocess.run([sys.executable, "-c", LIMITED_BUILD, str(limited), str(videos), str(limit), str(workers)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TASKFAILURE" in proc.stdout and "File too large" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    got = {p.name: p.read_bytes() for p in (limited / "shards").iterdir()}
    assert not [n for n in got if n.endswith(".tmp")], sorted(got)  # no temporary left eating space
    too_big = {n[:-len(".tar")] for n, d in want.items() if n.endswith(".tar") and len(d) > limit}
    fitting = {n[:-len(".tar")] for n, d in want.items() if n.endswith(".tar") and len(d) <= limit}
    assert too_big and fitting
    # A shard that did not fit committed nothing (no tar, no status, no stats: not complete); one that fit is done.
    assert not [n for n in got if n.split(".")[0] in too_big]
    assert {n: got[n] for n in got if n.split(".")[0] in fitting} == {
        n: d for n, d in want.items() if n.split(".")[0] in fitting}
    assert not (limited / "shards" / "index.parquet").exists()

    build_shards(_cfg(), limited, videos, workers=1)  # space again: the same command repairs the corpus
    assert {p.name: p.read_bytes() for p in (limited / "shards").iterdir()} == want


def test_tar_abort_after_a_real_enospc_does_not_raise_and_removes_the_file(tmp_path):
    import errno

    from lfvila.shards.tar import DeterministicTarWriter

    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    path = tmp_path / ".t.tar.tmp"
    path.symlink_to("/dev/full")  # every write to it fails with ENOSPC, as on a full disk
    writer = DeterministicTarWriter(path)
    writer.add("small", b"x" * 10)  # buffered: the error comes when the buffer is flushed
    with pytest.raises(OSError) as caught:
        writer.add("big", b"y" * 100_000)
    assert caught.value.errno == errno.ENOSPC
    writer.abort()  # closing flushes the buffer again and fails again: abort must neither raise nor keep the file
    assert writer.file.closed and not path.exists() and not path.is_symlink()


def test_an_oserror_outside_the_input_video_fails_the_task_not_the_sample(tmp_path, monkeypatch, capsys):
    """No ffmpeg to run is the environment: nothing is committed and the error names the cause."""
    from lfvila.errors import TaskFailure

    videos = tmp_path / "videos"
    videos.mkdir()
    make_colour_video(videos / "colour.mp4", 4)
    write_longform(tmp_path / "out" / "longform.parquet",
                   [{"key": f"k{i}", "video_id": "colour", "sentences": sentences_every(0, 3, 1, "colour")} for i in range(3)])
    (tmp_path / "ffmpeg").write_text("not a program")
    (tmp_path / "ffmpeg").chmod(0o755)
    monkeypatch.setenv("LFVILA_FFMPEG", str(tmp_path / "ffmpeg"))
    with pytest.raises(TaskFailure, match=r"2 shard task\(s\) failed.*Exec format error"):
        build_shards(_cfg(), tmp_path / "out", videos, workers=1)
    assert sorted(p.name for p in (tmp_path / "out" / "shards").iterdir()) == []
    # The CLI says it in one line, exit 2, no traceback: it is the environment, not a bug.
    from lfvila.cli import main

    assert main(["build", "--stage", "shards", "--out", str(tmp_path / "out"), "--videos", str(videos),
                 "--workers", "1", "--set", "shards.samples_per_shard=2"]) == 2
    err = capsys.readouterr().err
    assert "lfvila build: error: 2 shard task(s) failed (none of them committed)" in err and "Traceback" not in err
    monkeypatch.delenv("LFVILA_FFMPEG")
    assert build_shards(_cfg(), tmp_path / "out", videos, workers=1)["totals"]["samples_written"] == 3


def test_an_oserror_reading_the_input_video_stays_with_its_sample(tmp_path, monkeypatch):
    import lfvila.shards.sample as sample

    videos = tmp_path / "videos"
    videos.mkdir()
    make_colour_video(videos / "colour.mp4", 4)
    real_find = sample.find_source

    def find(videos_dir, video_id, clip_ids):
        if video_id == "unreadable":  # e.g. a permission or I/O error on the video's folder
            raise PermissionError(13, "Permission denied", str(videos_dir / video_id))
        return real_find(videos_dir, video_id, clip_ids)

    monkeypatch.setattr(sample, "find_source", find)
    rows = [{"key": f"k{i}", "video_id": v, "sentences": sentences_every(0, 3, 1, v)}
            for i, v in enumerate(["colour", "unreadable"])]
    write_longform(tmp_path / "out" / "longform.parquet", rows)
    totals = build_shards(_cfg(), tmp_path / "out", videos, workers=1)["totals"]
    assert totals["samples_written"] == 1 and totals["rejected_by_reason"] == {"video_io_error": 1}
    assert totals["samples_failed"] == 1  # retryable: --retry-failed redoes it once the cause is fixed


def _with_sar(shared_data: Path, dst: Path, size: str, sar: str) -> Path:
    """2 s of a real video scaled to ``size`` with sample aspect ratio ``sar``, by the bundled ffmpeg.

    The stored size must be at least as many pixels across as the SAR's ratio (160x480 for 400:1), or
    ffmpeg's decoder ignores the SAR as invalid.
    """
    import subprocess

    import imageio_ffmpeg

    src = shared_data / "videos/natural/kphotoalbum__movie.avi"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-i", str(src), "-t", "2",
                    "-an", "-vf", f"scale={size},setsar={sar}:max=1000", "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv420p", str(dst)], check=True, capture_output=True)
    return dst


def test_an_absurd_sample_aspect_ratio_is_rejected_without_huge_frames(tmp_path, shared_data):
    from lfvila.video.decode import width_range

    videos = tmp_path / "videos"
    videos.mkdir()
    wide = _with_sar(shared_data, videos / "wide.mp4", "160:480", "400/1")  # display 133:1: 32000x240 frames
    _with_sar(shared_data, videos / "narrow.mp4", "480:160", "1/400")  # display 1:133: 2x240 frames
    _with_sar(shared_data, videos / "plain.mp4", "160:120", "1/1")
    lo, hi = width_range(240)
    assert (lo, hi) == (30, 1920)
    decoder = SegmentDecoder(wide, 0.0, 2, 3.0, 240, None, 1, time.monotonic() + 60)
    assert {frame.y.shape for _, frame in decoder} == {(240, hi + 2)}  # ffmpeg itself never scales past the cap

    rows = [{"key": v, "video_id": v, "sentences": sentences_every(0.1, 1.9, 0.6, v)} for v in ("wide", "narrow", "plain")]
    write_longform(tmp_path / "out" / "longform.parquet", rows)
    summary = build_shards(_cfg("shards.samples_per_shard=3"), tmp_path / "out", videos, workers=1)
    assert summary["totals"]["rejected_by_reason"] == {"aspect_ratio_out_of_range": 2}
    assert [(s["key"], s["meta"]["width"]) for s in _samples(tmp_path / "out")] == [("plain", 320)]
    import pyarrow.parquet as pq

    status = {r["key"]: r for r in pq.read_table(tmp_path / "out" / "shards" / "status.parquet").to_pylist()}
    assert status["wide"]["status"] == "rejected" and "more than 1920x240" in status["wide"]["detail"]
    assert "2x240" in status["narrow"]["detail"]


def _session_processes(sid: int) -> dict[int, tuple[str, str]]:
    """Live processes of session ``sid`` from /proc: pid -> (start time, command); zombies count as gone."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, session, ...
        if int(fields[3]) == sid and fields[0] not in "ZX":
            found[int(entry.name)] = (fields[19], cmd[:120])
    return found


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_of_the_build_driver_takes_its_workers_and_resource_tracker_with_it(tmp_path, shared_data, workers):
    import os
    import signal
    import subprocess
    import sys

    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc")
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "vtest.avi").symlink_to(shared_data / "videos/natural/opencv-doc__vtest.avi")
    rows = [{"key": f"s{i:02d}", "video_id": "vtest", "sentences": sentences_every(i, i + 60, 5, "vtest")}
            for i in range(40)]  # ~20 s of work on two workers: still running when the driver is killed
    write_longform(tmp_path / "out" / "longform.parquet", rows)
    cmd = [sys.executable, "-m", "lfvila.cli", "build", "--stage", "shards", "--out", str(tmp_path / "out"),
           "--videos", str(videos), "--workers", str(workers), "--set", "shards.samples_per_shard=1"]
    # Its own session: every process it starts is found by session id, even once reparented.
    driver = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and driver.poll() is None:
            procs = _session_processes(driver.pid)
            pool = [p for p, (_, c) in procs.items() if "spawn_main" in c]
            tracker = any("resource_tracker" in c for _, c in procs.values())
            if any("ffmpeg" in c for _, c in procs.values()) and (workers == 1 or (len(pool) == 2 and tracker)):
                break
            time.sleep(0.05)
        assert driver.poll() is None, "the build must be killed while it decodes"
        assert len(pool) == (2 if workers == 2 else 0)
        os.kill(driver.pid, signal.SIGKILL)  # the driver alone, as the OOM killer or a scheduler would
        driver.wait()
        deadline = time.monotonic() + 20
        while (left := _session_processes(driver.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"still alive 20 s after the driver's SIGKILL: {sorted(c for _, c in left.values())}"
        assert len(list((tmp_path / "out" / "shards").glob("*.stats.json"))) < 40
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)  # whatever is left of the job, should the test fail
        except ProcessLookupError:
            pass
        driver.wait()


def test_the_parent_watchdog_alone_ends_a_worker_whose_parent_died(tmp_path):
    """Without PR_SET_PDEATHSIG (another OS): the getppid() watchdog thread ends the orphan."""
    import os
    import signal
    import subprocess
    import sys

    child = ("import os, sys, time; sys.platform = 'other'; from lfvila.shards.build import die_with_parent; "
             "die_with_parent(os.getppid(), 0.05); print('ready', flush=True); time.sleep(120)")
    parent = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {child!r}]); "
              "time.sleep(120)")
    driver = subprocess.Popen([sys.executable, "-c", parent], cwd=REPO, start_new_session=True,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline() == "ready\n"
        assert len(_session_processes(driver.pid)) == 2
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 10
        while _session_processes(driver.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _session_processes(driver.pid)
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        driver.wait()


# Names as an attacker or a clumsy user makes them: glob and URL syntax, option dashes, separators.
_NAME_CHARS = "ab1[]*?!:|,;#%&$'\"=- ._~{}^"


def _names():
    from hypothesis import strategies as st

    return st.text(_NAME_CHARS, min_size=1, max_size=12).filter(lambda n: n not in (".", "..") and not n.startswith("."))


def test_fuzz_a_video_is_found_by_its_own_name_in_a_directory_of_any_name(tmp_path_factory):
    from hypothesis import given

    from lfvila.video.source import find_source

    @given(_names(), _names(), _names())
    def check(directory: str, video_id: str, other: str) -> None:
        root = tmp_path_factory.mktemp("names") / directory
        root.mkdir()
        (root / f"{video_id}.mp4").write_bytes(b"")
        if other != video_id:
            (root / f"{other}.mkv").write_bytes(b"")  # a file a pattern reading of the names could pick
        found = find_source(root, video_id, [])
        assert found is not None and found.full == root / f"{video_id}.mp4"

    check()


def test_fuzz_ffmpeg_decodes_the_file_of_any_name(tmp_path, shared_data):
    import os

    from hypothesis import given

    from lfvila.shards.fixtures import cut_clip

    clip = cut_clip(shared_data / "videos/natural/kphotoalbum__movie.avi", tmp_path / "clip.mp4", 0, 1)
    make_colour_video(tmp_path / "x.mp4", 1)  # a different video, for names that point elsewhere as a URL
    want = [frame.y.tobytes() for _, frame in SegmentDecoder(clip, 0.0, 1, 3.0, 240, None, 1, time.monotonic() + 60)]
    assert len(want) == 1
    cwd = os.getcwd()
    os.chdir(tmp_path)  # relative names, as with --videos .
    try:
        @given(_names())
        def check(name: str) -> None:
            if name in ("clip.mp4", "x.mp4"):
                return
            os.link(clip, name)
            try:
                decoder = SegmentDecoder(Path(name), 0.0, 1, 3.0, 240, None, 1, time.monotonic() + 60)
                assert [frame.y.tobytes() for _, frame in decoder] == want, name
            finally:
                os.unlink(name)

        check()
    finally:
        os.chdir(cwd)


def test_an_oserror_writing_the_corpus_indexes_leaves_no_temporary_and_a_rerun_writes_them(tmp_path):
    from lfvila.errors import TaskFailure

    videos = tmp_path / "videos"
    videos.mkdir()
    make_colour_video(videos / "colour.mp4", 4)
    rows = [{"key": f"k{i}", "video_id": "colour", "sentences": sentences_every(0, 3, 1, "colour")} for i in range(3)]
    write_longform(tmp_path / "ref" / "longform.parquet", rows)
    build_shards(_cfg(), tmp_path / "ref", videos, workers=1)
    out = tmp_path / "out"
    write_longform(out / "longform.parquet", rows)
    (out / "shards" / "index.parquet" / "x").mkdir(parents=True)  # the index cannot be renamed into place
    (out / "shards" / ".status.parquet.123.tmp").write_bytes(b"left by a driver killed while writing it")
    with pytest.raises(TaskFailure, match=r"every shard is complete, but the corpus indexes could not be written"):
        build_shards(_cfg(), out, videos, workers=1)
    assert not [p.name for p in (out / "shards").iterdir() if p.name.endswith(".tmp")]
    shutil.rmtree(out / "shards" / "index.parquet")
    build_shards(_cfg(), out, videos, workers=1)
    names = sorted(p.name for p in (tmp_path / "ref" / "shards").iterdir())
    assert sorted(p.name for p in (out / "shards").iterdir()) == names
    for name in names + ["../corpus.json"]:
        assert (out / "shards" / name).read_bytes() == (tmp_path / "ref" / "shards" / name).read_bytes(), name
