"""lfvila.atomic: complete or absent, temporaries beside the target and gone after a failure, a real
kill -9 mid-write; and no module of lfvila hand-writes "temporary then rename" any more."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lfvila.atomic import (AtomicPath, atomic_write, atomic_write_bytes, atomic_write_text, remove_temporaries,
                           temporaries_pattern, temporary_path)

ROOT = Path(__file__).resolve().parents[1]


def _temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_writes_the_bytes_with_the_permissions_a_plain_open_gives(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01binary")
    atomic_write_text(tmp_path / "b.txt", "caf\u00e9\nline\r\n")
    with atomic_write(tmp_path / "c.json", "w", encoding="utf-8") as f:
        f.write('{"x": 1}\n')
    with AtomicPath(tmp_path / "d.dat") as tmp:  # a writer that takes a path (ParquetWriter, ffmpeg, savefig)
        tmp.write_bytes(b"by path")
    (tmp_path / "plain").write_bytes(b"")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01binary"
    assert (tmp_path / "b.txt").read_bytes() == "caf\u00e9\nline\r\n".encode()  # UTF-8, no newline translation
    assert (tmp_path / "c.json").read_text() == '{"x": 1}\n'
    assert (tmp_path / "d.dat").read_bytes() == b"by path"
    mode = (tmp_path / "plain").stat().st_mode
    assert all((tmp_path / n).stat().st_mode == mode for n in ("a.bin", "b.txt", "c.json", "d.dat"))
    assert _temporaries(tmp_path) == []
    atomic_write_bytes(tmp_path / "a.bin", b"new")  # replaces
    assert (tmp_path / "a.bin").read_bytes() == b"new"


def test_the_temporary_is_hidden_beside_the_target_and_unique(tmp_path):
    target = tmp_path / "out.parquet"
    with atomic_write(target) as f:
        f.write(b"x")
        assert Path(f.name).parent == tmp_path and not target.exists()
        assert _temporaries(tmp_path) == [Path(f.name).name]
        assert re.fullmatch(r"\.out\.parquet\.[0-9a-f]{32}\.tmp", Path(f.name).name)
    assert temporary_path(target) != temporary_path(target)  # two writers of one target never share one


@pytest.mark.parametrize("existing", [None, b"old complete content"])
def test_an_exception_mid_write_leaves_the_target_as_it_was_and_no_temporary(tmp_path, existing):
    target = tmp_path / "t.json"
    if existing is not None:
        target.write_bytes(existing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_write(target) as f:
            f.write(b"half of it")
            raise RuntimeError("disk on fire")
    with pytest.raises(KeyboardInterrupt):
        with AtomicPath(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert (target.read_bytes() if target.exists() else None) == existing
    assert _temporaries(tmp_path) == []


def test_a_failed_rename_removes_the_temporary(tmp_path):
    target = tmp_path / "occupied"
    (target / "child").mkdir(parents=True)  # a non-empty directory where the file should go
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"data")
    assert _temporaries(tmp_path) == [] and (target / "child").is_dir()


def test_a_directory_is_built_under_a_temporary_and_renamed_whole(tmp_path):
    out = AtomicPath(tmp_path / "plan")
    out.tmp.mkdir()
    (out.tmp / "a.json").write_text("{}")
    assert not (tmp_path / "plan").exists()
    out.commit()
    assert (tmp_path / "plan" / "a.json").read_text() == "{}" and _temporaries(tmp_path) == []
    broken = AtomicPath(tmp_path / "other")
    broken.tmp.mkdir()
    (broken.tmp / "x").write_text("partial")
    broken.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan"]


def test_mode_must_write_a_whole_new_file(tmp_path):
    for mode in ("a", "r+b", "ab"):
        with pytest.raises(ValueError, match="whole new file"):
            with atomic_write(tmp_path / "x", mode):
                pass


def test_remove_temporaries_takes_only_that_names_and_reads_glob_syntax_literally(tmp_path):
    name = "train[1]*.wids.json"
    mine = temporary_path(tmp_path / name)
    other = temporary_path(tmp_path / "train1x.wids.json")  # would match if the name were a pattern
    for p in (mine, other, tmp_path / name):
        p.write_text("x")
    assert temporaries_pattern("a.json") == ".a.json.*.tmp"
    assert remove_temporaries(tmp_path, name) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, name])


_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from lfvila.atomic import atomic_write
    with atomic_write(Path(sys.argv[1])) as f:
        f.write(b"x" * (1 << 20))
        f.flush()
        print("written", flush=True)
        time.sleep(60)
        f.write(b"never")
""")


@pytest.mark.parametrize("existing", [None, b"the previous complete file"])
def test_kill_9_mid_write_leaves_no_complete_looking_target(tmp_path, existing):
    """A real child process writing through atomic_write, SIGKILLed after 1 MiB reached the file."""
    target = tmp_path / "shard.tar"
    if existing is not None:
        target.write_bytes(existing)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(target)], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout.readline() == b"written\n"
        leftovers = _temporaries(tmp_path)
        assert len(leftovers) == 1 and (tmp_path / leftovers[0]).stat().st_size == 1 << 20
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    time.sleep(0.05)
    assert (target.read_bytes() if target.exists() else None) == existing
    assert _temporaries(tmp_path) == leftovers  # only the hidden temporary, which a rerun removes
    assert remove_temporaries(tmp_path, "shard.tar") == 1 and _temporaries(tmp_path) == []


# --- no hand-written "temporary then rename" outside lfvila/atomic.py --------------------------------

_HAND_WRITTEN = [
    (re.compile(r"\bos\.(replace|rename|renames)\("), "os.replace/os.rename"),
    (re.compile(r"\bshutil\.move\("), "shutil.move"),
    (re.compile(r"\.rename\("), "Path.rename"),
    (re.compile(r"\b\w*tmp\w*\.replace\("), "Path.replace of a temporary"),
    (re.compile(r"""\.(tmp|part)(\{|["'])"""), "a temporary's name spelled out"),
    (re.compile(r"\btempfile\.(mkstemp|NamedTemporaryFile)\("), "tempfile for an output"),
]
# Renames that are not an atomic write, each with its reason.
_ALLOWED = {
    ("lfvila/trainer/checkpoint.py", 'tmp = root / f".{final.name}.tmp"'):
        "a checkpoint directory all ranks write into: its name must be known to every rank unasked; "
        "it is renamed with atomic.replace_durably",
    ("lfvila/trainer/checkpoint.py", "os.rename(path, doomed)"):
        "deleting an old checkpoint: renamed first so that it stops looking complete",
    ("lfvila/download/fetch.py", "path = path.rename(path.with_suffix(_CONTENT_TYPES[ctype]))"):
        "giving a download its suffix inside its own <video_id>.part/ work folder",
    ("lfvila/download/run.py", 'work = out / f"{req.video_id}.part"'):
        "a download's work folder (tools write several files there); they are moved out with atomic.replace_durably",
    ("lfvila/video/source.py", 'SIDECAR_SUFFIXES = {".json", ".txt", ".vtt", ".srt", ".part", ".ytdl", ".jpg", ".jpeg", '
                               '".png", ".webp",'):
        "suffixes of files that are not videos, temporaries among them",
    ("lfvila/video/source.py", '".description", ".tmp", ".md5", ".sha256"}'):
        "the same set, continued",
}


def hand_written_renames(source: str) -> list[tuple[int, str, str]]:
    """(line number, line, what) of every line of ``source`` (code, not comments) that matches a pattern."""
    found = []
    for number, line in enumerate(source.splitlines(), 1):
        code = line.split("#", 1)[0].strip()
        for pattern, what in _HAND_WRITTEN:
            if pattern.search(code):
                found.append((number, code, what))
    return found


def test_the_scan_finds_the_spellings_it_was_written_for():
    old = '''
        tmp = path.with_name(path.name + ".tmp")
        tmp = videos_dir / f".{scene.video_id}.mp4.tmp{os.getpid()}"
        os.replace(tmp, path)
        tmp.replace(path)
        os.rename(a, b)
        p.rename(q)
        tmp = dest_dir / f".{name}.{uuid.uuid4().hex}.part"
        fd, name = tempfile.mkstemp(dir=d)
        x = s.replace("{video_id}", vid)  # not a rename
    '''
    assert {number for number, _, _ in hand_written_renames(old)} == set(range(2, 10))  # each line but the last


def test_no_module_hand_writes_temporary_then_rename():
    found = []
    seen_allowed = set()
    for path in sorted((ROOT / "lfvila").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "lfvila/atomic.py":
            continue
        for number, code, what in hand_written_renames(path.read_text(encoding="utf-8")):
            if (rel, code) in _ALLOWED:
                seen_allowed.add((rel, code))
            else:
                found.append(f"{rel}:{number}: {what}: {code}")
    assert found == [], "use lfvila.atomic instead:\n" + "\n".join(found)
    assert seen_allowed == set(_ALLOWED), f"allowed exceptions no longer in the code: {set(_ALLOWED) - seen_allowed}"
