"""Hostile and damaged shards (issue 12, "Loader"): every case ends, bounded in time and memory,
with the good samples yielded and the rest counted by reason."""
from __future__ import annotations

import collections
import io
import json
import random
import tarfile

import numpy as np
import pytest

from lfvila.data import DataConfig, build_loader
from lfvila.data.reader import read_shard
from lfvila.testing import synthetic_sample, write_sample_tar

SIZE = (24, 40)


def sample(key: str, seed: int = 0, **kw) -> dict:
    return synthetic_sample(key, random.Random(seed), size=SIZE, **kw)


def with_meta(s: dict, edit) -> dict:
    meta = json.loads(s["json"])
    edit(meta)
    return {**s, "json": json.dumps(meta).encode()}


def member(name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> bytes:
    """One ustar member (header + data padded to whole blocks)."""
    info = tarfile.TarInfo(name)
    info.size, info.type = len(data), kind
    return info.tobuf(tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % 512)


def sample_members(s: dict) -> bytes:
    return b"".join(member(f"{s['__key__']}.{ext}", data) for ext, data in s.items() if not ext.startswith("__"))


def with_field(header: bytes, at: int, value: bytes) -> bytes:
    """``header`` with bytes ``at`` replaced by ``value`` and its checksum recomputed (so only the
    field itself is wrong)."""
    block = bytearray(header[:512])
    block[at:at + len(value)] = value
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block) + header[512:]


def cfg_for(urls, bert_dir, **kw) -> DataConfig:
    base = dict(train_shards=urls, val_shards=urls, batch_size=4, num_workers=0, crop=(16, 24), max_tokens=12,
                bert_dir=str(bert_dir), error_log_interval_s=0)
    return DataConfig(**{**base, **kw})


def load(urls, bert_dir, **kw) -> tuple[list[str], dict]:
    """(keys yielded, counters) of one validation pass over ``urls``."""
    loader = build_loader(cfg_for(urls, bert_dir, **kw), "val", epoch_mode=True)
    keys = [k for batch in loader for k in batch["keys"]]
    return keys, loader.counters()


def reasons(url: str) -> list[tuple[str | None, str | None]]:
    """(key, error reason or None) of each item read_shard yields."""
    return [(item["__key__"], item.get("__error__")) for item in read_shard(url)]


# -- 1. tar headers that would not advance ----------------------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("pax_data", [b"0 path=x\n", b"-20 path=x\n", b"00 path=x\n", b"5 path=x\n",
                                      b"99999 path=x\n", b"nonsense", b"12 path"])
@pytest.mark.parametrize("through", ["file", "pipe"])
def test_a_pax_record_that_does_not_advance_ends_in_a_counted_error(tmp_path, pax_data, through):
    """A pax header record of length 0 (or negative, or past the header) spun forever. Now it is
    a counted bad header, and reading goes on at the member it described (under its plain name)."""
    good, after = sample("good", 1), sample("after", 2)
    path = tmp_path / "pax.tar"
    path.write_bytes(sample_members(good) + member("PaxHeader", pax_data, tarfile.XHDTYPE)
                     + sample_members(after) + b"\0" * 1024)
    url = str(path) if through == "file" else f"pipe:cat {path}"
    assert reasons(url) == [(None, "bad_tar_header"), ("good", None), ("after", None)]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("size_field", [b"-1000\0", b"-1\0", b"-7777777777\0", b"\xff" + b"\xff" * 11,
                                        b"\x80" + b"\x7f" * 11])
@pytest.mark.parametrize("through", ["file", "pipe"])
def test_negative_or_absurd_member_sizes_end_in_a_counted_error(tmp_path, size_field, through):
    """A size field that int() reads as negative made the header walk stand still; one of 2^88
    bytes (GNU base-256) asked for a buffer of that size."""
    good = sample("good", 1)
    bad = with_field(member("bad.0000.jpg", b"x" * 600), 124, size_field.ljust(12, b"\0"))
    path = tmp_path / "size.tar"
    path.write_bytes(sample_members(good) + bad + sample_members(sample("after", 2)) + b"\0" * 1024)
    url = str(path) if through == "file" else f"pipe:cat {path}"
    # The bad header's checksum holds: its name says whose it is, so only that sample is lost.
    assert reasons(url) == [("good", None), ("bad", "bad_tar_header"), ("after", None)]
    same_key = with_field(member("good.0099.jpg", b"x" * 600), 124, size_field.ljust(12, b"\0"))
    path.write_bytes(sample_members(good) + same_key + sample_members(sample("after", 2)) + b"\0" * 1024)
    assert reasons(url) == [("good", "bad_tar_header"), ("after", None)]


# -- 3. frame sizes from JPEG headers, checked before allocating ----------------------------------

def jpeg_claiming(jpeg: bytes, height: int, width: int) -> bytes:
    """``jpeg`` with its SOF0 frame header patched to claim ``height`` x ``width``."""
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[:sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[sof + 9:]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("resize_on", ["device", "loader"])
@pytest.mark.parametrize("claim", [(8000, 8000), (65500, 65500), (240, 400)])
@pytest.mark.parametrize("json_too", [False, True])
def test_a_jpeg_header_claiming_a_huge_frame_is_a_skip_not_an_allocation(tmp_path, bert_dir, monkeypatch,
                                                                         resize_on, claim, json_too):
    """Buffers were sized from the first frame's unchecked header: 8000x8000 asked for 98 GB,
    65500x65500 for 6.6 TB. With the JSON claiming the same size it must still be refused
    (data.max_frame_side), and nothing larger than a normal batch may be allocated."""
    from lfvila.data import buffers

    huge = sample("huge", 3)
    for name in [n for n in huge if n.endswith(".jpg")]:
        huge[name] = jpeg_claiming(huge[name], *claim)
    if json_too:
        huge = with_meta(huge, lambda m: m.update(height=claim[0], width=claim[1]))
    path = tmp_path / "huge.tar"
    write_sample_tar(path, [sample("ok_a", 1), huge, sample("ok_b", 2)])
    batch_bytes = 4 * 32 * SIZE[0] * SIZE[1] * 3  # a whole batch of (T, 24, 40, 3) frames
    real_storage, real_empty = buffers.new_storage, np.empty

    def storage(nbytes):  # refused before allocating: the test must not take the machine down
        assert nbytes <= batch_bytes, f"a {nbytes}-byte batch buffer"
        return real_storage(nbytes)

    def empty(shape, *args, **kw):
        assert int(np.prod(shape)) <= batch_bytes, f"a {shape} frame array"
        return real_empty(shape, *args, **kw)

    monkeypatch.setattr(buffers, "new_storage", storage)
    monkeypatch.setattr(np, "empty", empty)
    max_side = 4096 if claim[0] > 4096 else 200
    keys, counters = load([str(path)], bert_dir, resize_on=resize_on, max_frame_side=max_side)
    assert sorted(keys) == ["ok_a", "ok_b"]
    assert counters == {"bad_json" if json_too else "frame_size_mismatch": 1}


@pytest.mark.parametrize("factor", [10, 2])
def test_a_json_size_that_is_not_the_frames_is_a_skip(tmp_path, bert_dir, factor):
    """JSON width/height 10x (or 2x) the truth was accepted and sized the buffer from the JSON."""
    liar = with_meta(sample("liar", 3), lambda m: m.update(height=m["height"] * factor, width=m["width"] * factor))
    path = tmp_path / "liar.tar"
    write_sample_tar(path, [sample("ok", 1), liar])
    for resize_on in ("device", "loader"):
        assert load([str(path)], bert_dir, resize_on=resize_on) == (["ok"], {"frame_size_mismatch": 1})


# -- 4, 6. KEY.json: nesting, types, repeated keys -------------------------------------------

@pytest.mark.parametrize("edit", [
    lambda m: m.update(width=True),
    lambda m: m.update(height=True),
    lambda m: m.update(width=1e9),
    lambda m: m.update(width=10 ** 9),
    lambda m: m.update(height=40.0),
    lambda m: m.update(width=0),
    lambda m: m.update(extra=json.loads("[" * 50 + "]" * 50)),  # fine: just a nested value
], ids=["width_true", "height_true", "width_1e9_float", "width_1e9_int", "height_float", "width_0", "nested_ok"])
def test_width_and_height_are_strict_ints_in_range(tmp_path, bert_dir, edit):
    odd = with_meta(sample("odd", 3), edit)
    path = tmp_path / "odd.tar"
    write_sample_tar(path, [sample("ok", 1), odd])
    keys, counters = load([str(path)], bert_dir)
    nested_ok = "extra" in json.loads(odd["json"])
    assert (sorted(keys), counters) == ((["odd", "ok"], {}) if nested_ok else (["ok"], {"bad_json": 1}))


@pytest.mark.parametrize("where", ["top", "under_a_key"])
@pytest.mark.parametrize("through", ["file", "pipe"])
def test_deeply_nested_json_is_a_bad_json_skip(tmp_path, bert_dir, where, through):
    """json.loads raises RecursionError (not ValueError) past ~1000 levels: it escaped the loader."""
    deep = "[" * 100_000 + "]" * 100_000
    text = deep if where == "top" else '{"width": 40, "frame_times": %s}' % deep
    nested = {**sample("deep", 3), "json": text.encode()}
    path = tmp_path / "deep.tar"
    write_sample_tar(path, [sample("ok", 1), nested, sample("ok2", 2)])
    url = str(path) if through == "file" else f"pipe:cat {path}"
    keys, counters = load([url], bert_dir)
    assert sorted(keys) == ["ok", "ok2"] and counters == {"bad_json": 1}


@pytest.mark.parametrize("through", ["file", "pipe"])
def test_a_key_repeated_later_in_a_shard_is_counted_and_skipped(tmp_path, bert_dir, through):
    path = tmp_path / "dup.tar"
    first, again = sample("dup", 1), sample("dup", 2)
    write_sample_tar(path, [first, sample("other", 3), again, sample("last", 4)])
    url = str(path) if through == "file" else f"pipe:cat {path}"
    assert reasons(url) == [("dup", None), ("other", None), ("dup", "duplicate_key"), ("last", None)]
    keys, counters = load([url], bert_dir)
    assert sorted(keys) == ["dup", "last", "other"] and counters == {"duplicate_key": 1}
    (raw,) = [r for r in read_shard(url) if r["__key__"] == "dup" and "__error__" not in r]
    assert raw["json"] == first["json"]  # the first copy is the one used


def test_pax_path_records_are_read_as_tarfile_reads_them():
    """The hardened pax parser still reads what tarfile writes (several records, long paths)."""
    from lfvila.data.reader import iter_tar_members

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ["d" * 150 + "/k.json", "naïve/" + "é" * 80 + ".0000.jpg"]:
            info = tarfile.TarInfo(name)
            info.size, info.pax_headers = 3, {"comment": "x" * 40, "mtime": "1.5"}
            tar.addfile(info, io.BytesIO(b"abc"))
    names = [n for n, _ in iter_tar_members(io.BytesIO(buf.getvalue()))]
    assert names == ["d" * 150 + "/k.json", "naïve/" + "é" * 80 + ".0000.jpg"]


# -- 2. http(s) shards: connect, stall and total timeouts ----------------------------------------

class StallingServer:
    """A loopback HTTP server: ``/NAME`` serves file NAME of ``root`` whole, ``/stall/NAME`` sends
    its headers and the first half of its body, then nothing until the test ends; ``/trickle/NAME``
    sends one byte every 0.05 s."""

    def __init__(self, root):
        import http.server
        import threading
        import time

        self.release = threading.Event()
        release = self.release

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                mode, _, name = self.path.strip("/").rpartition("/")
                data = (root / name).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if mode == "stall":
                    self.wfile.write(data[:len(data) // 2])
                    self.wfile.flush()
                    release.wait(60)
                elif mode == "trickle":
                    for i in range(len(data)):
                        if release.wait(0.05):
                            return
                        self.wfile.write(data[i:i + 1])
                        self.wfile.flush()
                else:
                    self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.time = time

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_server(tmp_path):
    server = StallingServer(tmp_path)
    yield server
    server.close()


@pytest.mark.timeout(60)
def test_an_http_shard_that_stalls_mid_body_is_a_counted_timeout(tmp_path, bert_dir, http_server):
    """webdataset ran curl without a stall or total timeout: a server that stopped sending
    mid-body blocked the loader forever. Now the shard ends in ``shard_timeout`` after
    ``data.http_stall_timeout_s`` and the rest of the corpus is read."""
    write_sample_tar(tmp_path / "a.tar", [sample(f"a{i}", i) for i in range(6)])
    write_sample_tar(tmp_path / "b.tar", [sample("b0", 10), sample("b1", 11)])
    urls = [f"{http_server.url}/stall/a.tar", f"{http_server.url}/b.tar"]
    started = http_server.time.monotonic()
    keys, counters = load(urls, bert_dir, http_stall_timeout_s=1.0)
    elapsed = http_server.time.monotonic() - started
    assert counters == {"shard_timeout": 1}
    assert {"b0", "b1"} <= set(keys) and {k for k in keys if k.startswith("a")} < {f"a{i}" for i in range(6)}
    assert elapsed < 20


@pytest.mark.timeout(60)
def test_an_http_shard_that_trickles_hits_the_total_timeout(tmp_path, http_server):
    """A byte every 0.05 s never trips the stall timeout; the total one ends it."""
    from lfvila.data.reader import HttpTimeouts

    write_sample_tar(tmp_path / "a.tar", [sample("a0", 1)])
    started = http_server.time.monotonic()
    got = list(read_shard(f"{http_server.url}/trickle/a.tar", HttpTimeouts(connect_s=5, stall_s=5, total_s=1.5)))
    assert [(r["__error__"], "total" in r["__detail__"]) for r in got] == [("shard_timeout", True)]
    assert http_server.time.monotonic() - started < 10


@pytest.mark.timeout(60)
def test_an_http_server_that_never_answers_is_a_connect_timeout(tmp_path):
    """A listening socket that never accepts (backlog full) or answers: the connect timeout."""
    import socket

    from lfvila.data.reader import HttpTimeouts

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the TCP handshake into its backlog, never answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/a.tar"
        got = list(read_shard(url, HttpTimeouts(connect_s=0.5, stall_s=5, total_s=30)))
    finally:
        silent.close()
    assert [r["__error__"] for r in got] == ["shard_timeout"]


def test_http_timeouts_are_validated():
    for name in ("http_connect_timeout_s", "http_stall_timeout_s", "http_total_timeout_s"):
        for bad in (0, -1, float("inf"), True, "5"):
            with pytest.raises(ValueError, match=name):
                DataConfig(**{name: bad})


# -- 6. a damaged header costs its sample, not the rest of the shard ---------------------------------

@pytest.mark.parametrize("through", ["file", "pipe"])
@pytest.mark.parametrize("damage", ["one_header", "overwritten_stretch"])
def test_a_damaged_header_costs_the_samples_it_touches_and_they_are_counted(tmp_path, bert_dir, through, damage):
    """Read through ``pipe:`` (or member by member), one bad header ended the shard with a single
    ``truncated_tar`` however many samples followed. Now the reader goes on at the next valid
    header; every sample lost is counted: the one being read (``bad_tar_header``) and one whose
    first members were in the damaged bytes (by its own reason). The local file is written by
    webdataset's TarWriter (JSON last), so it is read member by member too."""
    import webdataset as wds

    samples = [sample(f"s{i}", i) for i in range(6)]
    path = tmp_path / "damaged.tar"
    if through == "pipe":
        write_sample_tar(path, samples)
    else:
        with wds.TarWriter(str(path)) as sink:
            for s in samples:
                sink.write(s)
    with tarfile.open(path) as tar:
        members = {m.name: m for m in tar.getmembers()}
    data = bytearray(path.read_bytes())
    if damage == "one_header":  # s2's third frame header: s2 lost, everything else read
        data[members["s2.0002.jpg"].offset + 3] ^= 0x20
        lost = {"s2": "bad_tar_header"}
    else:  # from inside s2's frames to inside s4's second frame header: s2, s3 (unseen) and s4 lost
        start = members["s2.0003.jpg"].offset + 100
        end = members["s4.0001.jpg"].offset + 10
        data[start:end] = random.Random(0).randbytes(end - start)
        lost = {"s2": "bad_tar_header", "s4": "missing_json" if through == "pipe" else "frame_count_mismatch"}
    path.write_bytes(bytes(data))
    url = str(path) if through == "file" else f"pipe:cat {path}"
    errors = {r["__key__"]: r["__error__"] for r in read_shard(url) if "__error__" in r}
    assert errors == {"s2": "bad_tar_header"}
    keys, counters = load([url], bert_dir)
    gone = set(lost) | ({"s3"} if damage != "one_header" else set())
    assert sorted(keys) == sorted(s["__key__"] for s in samples if s["__key__"] not in gone)
    assert counters == dict(collections.Counter(lost.values()))


# -- 5. a shard truncated or overwritten while it is read ------------------------------------------

READ_WHILE_DAMAGED = r"""
import collections, json, os, sys
import numpy as np
from lfvila.data.config import DataConfig
from lfvila.data.reader import read_shard
from lfvila.data.sampling import SkipSample, plan_sample

cfg = DataConfig(n_sentences=2, frames_per_sentence=8)
result = {}
for path, how in zip(sys.argv[1::2], sys.argv[2::2]):
    counts = collections.Counter()
    for i, raw in enumerate(read_shard(path)):
        if i == 1:  # the reader is inside the shard, with samples still to come
            size = os.path.getsize(path)
            if how == "truncate":
                os.truncate(path, size // 3)
            else:
                with open(path, "r+b") as f:
                    f.seek(size // 3)
                    f.write(os.urandom(size - size // 3))
        if "__error__" in raw:
            counts[raw["__error__"]] += 1
            continue
        try:
            plan_sample(raw, cfg, np.random.default_rng(i), True, (i,))
            counts["samples"] += 1
        except SkipSample as exc:
            counts[exc.reason] += 1
    result[how] = counts
print(json.dumps(result))
"""


@pytest.mark.timeout(120)
def test_a_shard_damaged_while_it_is_read_is_counted_not_a_crash(tmp_path):
    """Local shards were memory-mapped: a shard truncated while read killed the process with
    SIGBUS (the docs promise nothing in the data crashes the loader). They are read with pread
    now; the damage (truncated, or overwritten in place) ends in counted records."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    args = []
    for how in ("truncate", "overwrite"):
        path = tmp_path / f"{how}.tar"
        write_sample_tar(path, [sample(f"s{i}", i, frames_per_sentence=(20, 30)) for i in range(8)])
        args += [str(path), how]
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", READ_WHILE_DAMAGED, *args], capture_output=True,
                         text=True, timeout=100, env={**os.environ, "PYTHONPATH": str(repo)})
    assert run.returncode == 0, f"exit {run.returncode} (negative: killed by that signal): {run.stderr[-2000:]}"
    for how, counts in json.loads(run.stdout).items():
        assert 2 <= counts.pop("samples") < 8, how  # read before the damage, and not after it
        assert sum(counts.values()) >= 1, how  # the damage is counted


# -- fuzz: mutated bytes of a real small shard -------------------------------------------------------

def _fuzz_base_shard(tmp_dir) -> tuple[bytes, list[int], list[str]]:
    """(bytes, member header and JSON offsets, keys) of a small shard in the shard stage's layout."""
    samples = [sample(f"f{i}", 40 + i, n_sentences=2, frames_per_sentence=(2, 4)) for i in range(3)]
    path = tmp_dir / "base.tar"
    write_sample_tar(path, samples)
    with tarfile.open(path) as tar:
        offsets = sorted({o for m in tar.getmembers() for o in (m.offset, m.offset_data) if m.name.endswith(".json")}
                         | {m.offset for m in tar.getmembers()})
    return path.read_bytes(), offsets, [s["__key__"] for s in samples]


@pytest.mark.timeout(900)  # make test-slow runs 2000 examples
def test_fuzz_mutated_shards_never_crash_hang_or_lose_samples_silently(tmp_path_factory, bert_dir, monkeypatch):
    """Random byte edits (biased towards headers and JSON) and truncations of a real 3-sample shard,
    read as a local file (by offsets and member by member) and through ``pipe:``: the loader always
    finishes, allocates nothing larger than a batch of the declared frame size (or a read chunk),
    yields each key at most once, and counts at least one item whenever a sample is missing."""
    import resource
    import time

    from hypothesis import given
    from hypothesis import strategies as st

    from lfvila.data import buffers, reader

    tmp = tmp_path_factory.mktemp("fuzz")
    data, offsets, keys = _fuzz_base_shard(tmp)
    cfg_kw = dict(n_sentences=2, frames_per_sentence=2, batch_size=2)
    batch_bytes = 2 * 4 * SIZE[0] * SIZE[1] * 3
    real_storage, real_chunk = buffers.new_storage, reader._Chunk

    def storage(nbytes):
        assert nbytes <= batch_bytes, f"a {nbytes}-byte batch buffer"
        return real_storage(nbytes)

    def chunk(size):
        assert size <= reader.CHUNK_BYTES + reader.MAX_MEMBER_BYTES + 2 * reader.PAGE, f"a {size}-byte read chunk"
        return real_chunk(size)

    monkeypatch.setattr(buffers, "new_storage", storage)
    monkeypatch.setattr(reader, "_Chunk", chunk)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    position = st.one_of(st.integers(0, len(data) - 1),
                         st.sampled_from(offsets).flatmap(lambda o: st.integers(o, min(o + 511, len(data) - 1))))
    edits = st.lists(st.tuples(position, st.integers(0, 255)), min_size=1, max_size=6)

    @given(edits=edits, cut=st.one_of(st.none(), st.integers(0, len(data))), piped=st.booleans())
    def check(edits, cut, piped):
        mutated = bytearray(data)
        for at, value in edits:
            mutated[at] = value
        path = tmp / "mutated.tar"
        path.write_bytes(bytes(mutated[:cut]))
        url = f"pipe:cat {path}" if piped else str(path)
        started = time.process_time()  # CPU time: a loaded machine must not fail the test
        loader = build_loader(cfg_for([url], bert_dir, **cfg_kw), "val", epoch_mode=True)
        got = []
        for batch in loader:
            got += batch["keys"]
            for key, video in zip(batch["keys"], batch["video"]):
                assert video.shape == (3, 4, *SIZE), key
        assert time.process_time() - started < 10  # hangs: the test's timeout
        assert len(got) == len(set(got)) and set(got) <= set(keys)
        if len(got) < len(keys):
            assert sum(loader.counters().values()) >= 1, (edits, cut, got)

    check()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < 500, f"peak RSS grew {grown_mb:.0f} MB"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bad", ["pax_length_0", "negative_size", "checksum", "cut_in_a_member"])
def test_shard_check_walks_damaged_headers_without_hanging(tmp_path, bad):
    """The pre-run shard check counted samples with tarfile, which looped forever on a negative
    member size and stopped counting silently at a pax record of length 0. A shard damaged past
    its first header is ``damaged`` (usable: the loader reads what is intact), with the reason."""
    from lfvila.data.shardcheck import check_shards

    good, after = sample_members(sample("good", 1)), sample_members(sample("after", 2))
    tail = {
        "pax_length_0": member("PaxHeader", b"0 path=x\n", tarfile.XHDTYPE) + after,
        "negative_size": with_field(member("bad.0000.jpg", b"x" * 600), 124, b"-1000".ljust(12, b"\0")) + after,
        "checksum": after[:3] + b"X" + after[4:],
        "cut_in_a_member": after[:1000],
    }[bad]
    path = tmp_path / "d.tar"
    path.write_bytes(good + tail + (b"\0" * 1024 if bad != "cut_in_a_member" else b""))
    check = check_shards([str(path)], "train")
    assert check.status == ["damaged"] and check.usable == 1 and "header at byte" in check.reasons[str(path)]
    path.write_bytes(good + after + b"\0" * 1024)
    assert check_shards([str(path)], "train").samples == [2]


def test_fuzz_sample_json_fields_are_a_plan_or_a_counted_skip():
    """Any JSON value in any field of a real sample's KEY.json (and extra keys): planning and
    sizing the sample either succeed with a frame size the JPEGs have, or raise SkipSample; never
    another exception, never a size the frames do not have."""
    from hypothesis import given
    from hypothesis import strategies as st

    from lfvila.data.frames import render_geometry
    from lfvila.data.sampling import SkipSample, plan_sample

    base = sample("j", 5, n_sentences=3)
    meta = json.loads(base["json"])
    cfg = DataConfig(n_sentences=2, frames_per_sentence=2, resize_on="device")
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 20, 10 ** 20), st.floats(allow_nan=True),
                        st.text(max_size=5), st.sampled_from([0, 1, 24, 40, 10 ** 9, -1, 2 ** 63]))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                                              max_size=4), max_leaves=8)
    fields = st.sampled_from(["width", "height", "frame_times", "sentences", "frame_bytes", "fps", "key"])
    sentence_fields = st.sampled_from(["text", "start", "end", "frame_start", "frame_end"])

    @given(edits=st.lists(st.tuples(fields, values), max_size=3),
           sentence_edits=st.lists(st.tuples(st.integers(0, 2), sentence_fields, values), max_size=3))
    def check(edits, sentence_edits):
        edited = json.loads(base["json"])
        for i, name, value in sentence_edits:
            edited["sentences"][i][name] = value
        for name, value in edits:
            edited[name] = value
        raw = {**base, "__url__": "u", "json": json.dumps(edited).encode()}
        try:
            plan = plan_sample(raw, cfg, np.random.default_rng(0), True, (0,))
            factor, hw = render_geometry(plan, cfg)
        except SkipSample:
            return
        assert plan.frame_hw == (meta["height"], meta["width"]) and hw == plan.frame_hw and factor == 1

    check()
