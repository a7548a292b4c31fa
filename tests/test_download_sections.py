"""Partial downloads (download.sections: runs): sections cut by ffmpeg over loopback HTTP with range
requests, read back by the shard stage with frame times in source seconds (the clock video)."""
from __future__ import annotations

import json
import re
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import numpy as np
import pytest
import simplejpeg

from lfvila.build_config import BuildConfig
from lfvila.config import load_config
from lfvila.download.sections import cut_section, runs_to_sections, write_sections_json
from lfvila.shards.build import build_shards
from lfvila.shards.fixtures import PALETTE, make_colour_video, sentences_every, write_longform
from lfvila.shards.read import iter_samples
from lfvila.video.source import find_source

SECONDS, FPS_SOURCE, GOP = 60, 5, 20  # a keyframe every 4 s: a stream copy starts up to 4 s early


class _RangeHandler(SimpleHTTPRequestHandler):
    """Serves a folder with single-range ``Range: bytes=a-b`` support; counts body bytes sent."""

    sent = 0
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        # Bound what sits in socket buffers when ffmpeg drops a connection to seek, so the byte count
        # is what a real network would carry, not what the loopback kernel buffered.
        import socket
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        lo, hi = (int(match[1]), int(match[2]) if match[2] else size - 1) if match else (0, size - 1)
        hi = min(hi, size - 1)
        if lo >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return
        self.send_response(206 if match else 200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(hi - lo + 1))
        if match:
            self.send_header("Content-Range", f"bytes {lo}-{hi}/{size}")
        self.end_headers()
        with path.open("rb") as f:
            f.seek(lo)
            left = hi - lo + 1
            try:
                while left:
                    chunk = f.read(min(65536, left))
                    self.wfile.write(chunk)
                    left -= len(chunk)
                    with self.lock:
                        type(self).sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client seeked elsewhere


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url of the clock video, its path, a function returning bytes sent so far)."""
    root = tmp_path_factory.mktemp("www")
    video = make_colour_video(root / "clock.mp4", SECONDS, fps=FPS_SOURCE, size="320x180", noise=20,
                              codec=["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(GOP),
                                     "-sc_threshold", "0", "-movflags", "+faststart"])
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_RangeHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/clock.mp4", video, lambda: _RangeHandler.sent
    server.shutdown()
    server.server_close()


def _keyframe_at_or_before(video: Path, t: float) -> float:
    with av.open(str(video)) as c:
        s = c.streams.video[0]
        times = [float(p.pts * s.time_base) for p in c.demux(s) if p.pts is not None and p.is_keyframe]
    return max(k for k in times if k <= t + 1e-9)


def _colour_second(jpg_or_rgb) -> int:
    """The palette index on screen (the clock's second modulo 8)."""
    rgb = simplejpeg.decode_jpeg(jpg_or_rgb) if isinstance(jpg_or_rgb, bytes) else jpg_or_rgb
    mean = rgb.reshape(-1, 3).mean(0)
    return int(np.argmin([np.abs(mean - np.array(c)).max() for c in PALETTE]))


def test_runs_to_sections_widens_merges_and_clamps():
    runs = [{"start": 50.0, "end": 60.0}, {"start": 1.0, "end": 8.0}, {"start": 12.0, "end": 20.0},
            {"start": 14.0, "end": 16.0}]
    assert runs_to_sections(runs, margin_s=1.5, merge_gap_s=0.0) == [(0.0, 9.5), (10.5, 21.5), (48.5, 61.5)]
    assert runs_to_sections(runs, margin_s=1.5, merge_gap_s=1.0) == [(0.0, 21.5), (48.5, 61.5)]
    assert runs_to_sections(runs, margin_s=2.0, merge_gap_s=0.0) == [(0.0, 22.0), (48.0, 62.0)]  # touching
    assert runs_to_sections(runs, margin_s=2.0, merge_gap_s=30.0) == [(0.0, 62.0)]
    assert runs_to_sections(runs, margin_s=0.0, merge_gap_s=3.9) == [(1.0, 8.0), (12.0, 20.0), (50.0, 60.0)]
    assert runs_to_sections([], 2.0, 1.0) == []
    with pytest.raises(ValueError):
        runs_to_sections(runs, -1.0, 0.0)


def test_cut_section_over_http_fetches_part_of_the_file_and_measures_its_offset(tmp_path, served):
    url, video, sent = served
    before = sent()
    entry = cut_section(url, 21.3, 30.7, tmp_path / "clock", "s000.mp4")
    fetched = sent() - before
    size = video.stat().st_size
    print(f"section 21.3-30.7 s of a {SECONDS} s video: {fetched} of {size} bytes fetched")
    assert fetched < 0.4 * size  # 9.4 s (+ up to 4 s before, to the keyframe) of 60 s
    keyframe = _keyframe_at_or_before(video, 21.3)
    assert keyframe < 21.3  # the test needs a stream copy that starts early
    assert entry == {"file": "s000.mp4", "start": 21.3, "end": 30.7, "offset": pytest.approx(keyframe, abs=1e-6)}
    assert not [p for p in (tmp_path / "clock").iterdir() if p.name != "s000.mp4"]  # no temporary left
    with av.open(str(tmp_path / "clock" / "s000.mp4")) as c:
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    # File time t shows source second offset + t.
    for t, rgb in frames:
        assert _colour_second(rgb) == int(entry["offset"] + t + 1e-6) % len(PALETTE)
    assert entry["offset"] + frames[-1][0] >= 30.7 - 1 / FPS_SOURCE - 1e-6


def test_shards_from_sections_match_the_full_video(tmp_path, served):
    url, video, _ = served
    runs = [sentences_every(22.1, 27.9, 1.4, "clock"), sentences_every(41.0, 47.5, 1.3, "clock")]
    rows = [{"key": f"k{i}", "video_id": "clock", "sentences": s} for i, s in enumerate(runs)]
    rows.append({"key": "k9", "video_id": "clock", "sentences": sentences_every(33.0, 38.0, 1.0, "clock")})
    ranges = runs_to_sections([{"start": s[0]["start"], "end": s[-1]["end"]} for s in runs], 1.0, 2.0)
    assert len(ranges) == 2
    sections_dir = tmp_path / "sections" / "clock"
    entries = [cut_section(url, lo, hi, sections_dir, f"{n:03d}.mp4") for n, (lo, hi) in enumerate(ranges)]
    write_sections_json(sections_dir, "clock", entries)
    assert json.loads((sections_dir / "sections.json").read_text())["video_id"] == "clock"
    assert find_source(tmp_path / "sections", "clock", []).sections is not None

    full_dir = tmp_path / "full"
    full_dir.mkdir()
    (full_dir / "clock.mp4").symlink_to(video)
    built = {}
    for name, videos in (("sections", tmp_path / "sections"), ("full", full_dir)):
        out = tmp_path / f"out_{name}"
        write_longform(out / "longform.parquet", rows)
        summary = build_shards(load_config(BuildConfig, None, []), out, videos, workers=1)
        built[name] = (summary, {s["meta"]["key"]: s for tar in sorted((out / "shards").glob("*.tar"))
                                 for s in iter_samples(tar)})

    summary, samples = built["sections"]
    # The run between the two sections was not downloaded: failed (retryable), with the documented reason.
    assert summary["totals"]["rejected_by_reason"] == {"span_not_downloaded": 1}
    assert sorted(samples) == ["k0", "k1"]
    full_summary, full_samples = built["full"]
    assert sorted(full_samples) == ["k0", "k1", "k9"]
    identical_jpegs = 0
    for key, sample in samples.items():
        full = full_samples[key]
        assert sample["meta"]["frame_times"] == full["meta"]["frame_times"]
        assert sample["meta"]["sentences"] == full["meta"]["sentences"]
        for t, jpg in zip(sample["meta"]["frame_times"], sample["frames"]):
            # A slot shows the frame that started strictly before its time: second ceil(t) - 1.
            assert _colour_second(jpg) == (int(np.ceil(t - 1e-9)) - 1) % len(PALETTE), f"frame at {t} s"
        identical_jpegs += sum(a == b for a, b in zip(sample["frames"], full["frames"]))
    # Stream copy keeps the source's packets: the decoded frames, hence the JPEGs, are the full video's.
    assert identical_jpegs == sum(len(s["frames"]) for s in samples.values())


def test_sections_json_with_a_path_outside_its_folder_is_refused(tmp_path):
    from lfvila.video.source import read_sections

    d = tmp_path / "v"
    d.mkdir()
    (d / "a.mp4").write_bytes(b"x")
    write_sections_json(d, "v", [{"file": "a.mp4", "start": 5.0, "end": 9.0, "offset": 4.0},
                                 {"file": "gone.mp4", "start": 1.0, "end": 2.0, "offset": 1.0}])
    (only,) = read_sections(d)  # entries whose file is missing are left out
    assert (only.path, only.offset) == (d / "a.mp4", 4.0)
    source = find_source(tmp_path, "v", [])
    assert source.for_span(4.0, 9.0).full == d / "a.mp4" and source.for_span(3.9, 8.0) is None
    write_sections_json(d, "v", [{"file": "../a.mp4", "start": 5.0, "end": 9.0, "offset": 4.0}])
    with pytest.raises(ValueError, match="plain file name"):
        read_sections(d)
