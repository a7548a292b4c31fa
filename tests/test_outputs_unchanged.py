"""Restructuring keeps outputs byte-identical: every table, shard and corpus.json of the demo corpus
and of corpora built from real annotations and real videos has the digest in tests/golden/outputs.json.

Those digests were recorded at f68db1f (before issue 15's shard-format, task and stage-config work);
at that commit the JPEG corpora, the tables and the demo were also checked equal, file for file, to
6263761 (before any issue 15 work; it had no h264 shards and wrote fewer settings to corpus.json).

The bytes depend on the encoders as well as on lfvila (ffmpeg's scaler, libjpeg-turbo through
simplejpeg, libx264 through PyAV, pyarrow's parquet writer), so digests are kept per toolchain: on a
machine whose toolchain has none recorded the test skips and says so. To record one there, run
``python tests/test_outputs_unchanged.py`` in a checkout of the recorded commit and add the printed
entry to tests/golden/outputs.json.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Real ActivityNet Captions val_1 entries, their timestamps rescaled onto real local videos of
# different containers and codecs (the content does not match; the mechanics do).
ANET_ON_VIDEOS = {
    "v_4Lu8ECLHvK4": "natural/decord__flipping_a_pancake.mkv",  # h264 in matroska, 426x240
    "v_HWV_ccmZVPA": "natural/pd-extendedview__diver.mov",  # mjpeg, 640x480
    "v_frePM0YGtQE": "natural/python-nbsphinx-doc__Shepard_Calais_1906_FrenchGP.ogv",  # theora, no fps
    "v_HtkuvF7VbSQ": "natural/opencv-doc__vtest.avi",  # msmpeg4v3, 768x576, 79.5 s
}
VIDEO_SECONDS = {"natural/decord__flipping_a_pancake.mkv": 10.38, "natural/pd-extendedview__diver.mov": 14.04,
                 "natural/python-nbsphinx-doc__Shepard_Calais_1906_FrenchGP.ogv": 19.2,
                 "natural/opencv-doc__vtest.avi": 79.5}
MANIFEST_ONLY_SOURCES = (
    "howto100m:{data}/annotations/howto100m_asr_captions/small_train_captions",
    "youcook2:{data}/annotations/youcook2/youcookii_annotations_trainval.json",
    "subtitles:{data}/annotations/asr_subtitles/vtt-to-json_example_youtube_auto.en.vtt",
    "subtitles:{data}/annotations/asr_subtitles/sintel_en.srt",
)
# The shard stage's working directory (its plan, which holds absolute paths), not an output.
NOT_COMPARED_DIRS = {".plan"}


def toolchain() -> str:
    """The encoders the bytes depend on, as one string."""
    import av
    import imageio_ffmpeg
    import pyarrow
    import simplejpeg

    ffmpeg = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-version"], capture_output=True, text=True,
                            check=True).stdout.splitlines()[0]
    libraries = ", ".join(f"{name} {'.'.join(map(str, version))}" for name, version in sorted(av.library_versions.items()))
    return (f"{ffmpeg.split(' Copyright')[0]}; PyAV {av.__version__} ({libraries}); simplejpeg {simplejpeg.__version__}; "
            f"pyarrow {pyarrow.__version__}")


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not NOT_COMPARED_DIRS & set(p.relative_to(root).parts)}


def _lfvila(cwd: Path, *args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "lfvila.cli", *args], capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stderr[-2000:]


def build_real_corpora(data: Path, out: Path) -> dict[str, Path]:
    """The real-data corpora: ActivityNet on local videos as JPEG and as h264 shards, and the other
    real sources' manifest tables. Returns {name: corpus directory}. Paths are given relative to
    ``out`` (tables and reasons quote them as given, so the bytes do not depend on where ``out`` is)."""
    val_1 = json.loads((data / "annotations/activitynet_captions/val_1.json").read_text())
    picked = {}
    for vid, video in ANET_ON_VIDEOS.items():
        entry = val_1[vid]
        scale = VIDEO_SECONDS[video] / entry["duration"]
        picked[vid] = {"duration": VIDEO_SECONDS[video], "sentences": entry["sentences"],
                       "timestamps": [[round(s * scale, 2), round(e * scale, 2)] for s, e in entry["timestamps"]]}
    videos = out / "videos"
    videos.mkdir(parents=True)
    for vid, video in ANET_ON_VIDEOS.items():
        (videos / f"{vid}{Path(video).suffix}").symlink_to(data / "videos" / video)
    annotations = out / "anet_on_videos.json"
    annotations.write_text(json.dumps(picked))
    # retrieval_activitynet.yaml's manifest settings, spelled out (the recipe came later than 6263761)
    recipe = [a for kv in ("manifest.min_clips=1", "manifest.max_gap_s=null", "manifest.max_overlap_s=null",
                           "manifest.max_clips=null", "manifest.max_duration_s=null", "manifest.val_fraction=0.25",
                           "shards.samples_per_shard=2", "video.frame_height=96") for a in ("--set", kv)]
    corpora = {"anet_jpeg": out / "anet_jpeg", "anet_h264": out / "anet_h264", "tables": out / "tables"}
    _lfvila(out, "build", "--out", "anet_jpeg", "--source", "activitynet:anet_on_videos.json", "--videos", "videos",
            *recipe)
    _lfvila(out, "build", "--out", "anet_h264", "--source", "activitynet:anet_on_videos.json", "--videos", "videos",
            *recipe, "--set", "shards.frames=h264")
    (out / "data").symlink_to(data)
    sources = [a for s in MANIFEST_ONLY_SOURCES for a in ("--source", s.format(data="data"))]
    _lfvila(out, "build", "--out", "tables", *sources, "--stage", "manifest")
    return corpora


def build_demo(out: Path) -> Path:
    """The demo corpus: the sample rendered as ``lfvila demo`` renders it, built with the demo's
    settings by ``lfvila build`` from paths relative to ``out`` (the demo itself passes absolute
    ones, which the tables quote)."""
    import lfvila.sample
    from lfvila.demo import DEMO_FRAME_HEIGHT, DEMO_SAMPLES_PER_SHARD, DEMO_VAL_FRACTION

    # render_demo_videos was render_sample before issue 15.8
    render = getattr(lfvila.sample, "render_demo_videos", None) or lfvila.sample.render_sample
    rendered = render(out / "sample", limit=None, workers=2)
    metadata = Path(rendered.sources[0].split(":", 1)[1]).relative_to(out.resolve())
    _lfvila(out, "build", "--out", "demo", "--source", f"hdvila:{metadata}",
            "--videos", str(Path(rendered.videos_dir).relative_to(out.resolve())),
            "--set", f"manifest.val_fraction={DEMO_VAL_FRACTION}", "--set", f"video.frame_height={DEMO_FRAME_HEIGHT}",
            "--set", f"shards.samples_per_shard={DEMO_SAMPLES_PER_SHARD}")
    return out / "demo"


GOLDEN: dict[str, dict[str, dict[str, str]]] = json.loads((REPO / "tests/golden/outputs.json").read_text())


def _golden_for_this_toolchain() -> dict[str, dict[str, str]]:
    found = toolchain()
    if found not in GOLDEN:
        pytest.skip(f"no digests recorded for this toolchain ({found}); recorded: {sorted(GOLDEN)}")
    return GOLDEN[found]


def test_real_data_tables_and_shards_are_unchanged(shared_data, tmp_path):
    golden = _golden_for_this_toolchain()
    for name, corpus in build_real_corpora(shared_data, tmp_path).items():
        assert digests(corpus) == golden[name], name


def test_demo_tables_and_shards_are_unchanged(tmp_path):
    golden = _golden_for_this_toolchain()
    assert digests(build_demo(tmp_path)) == golden["demo"]


if __name__ == "__main__":  # record: python tests/test_outputs_unchanged.py (in the checkout to record)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        corpora = build_real_corpora(REPO.parent / "shared" / "data", Path(tmp) / "real")
        (Path(tmp) / "demo").mkdir()
        corpora["demo"] = build_demo(Path(tmp) / "demo")
        print(json.dumps({toolchain(): {name: digests(c) for name, c in corpora.items()}}, indent=1))
