"""The embedded demo sample: committed sources, learnable sentences, exact and repeatable renders."""
from __future__ import annotations

import json

import av
import numpy as np
import pytest

from lfvila import sample
from lfvila.sample import COLOURS, GAP_COLOUR, SAMPLE_DIR, generate_scenes, load_scenes, render_demo_videos


def _rgb(hex_colour: str) -> np.ndarray:
    v = int(hex_colour, 16)
    return np.array([(v >> 16) & 255, (v >> 8) & 255, v & 255])


def test_committed_sources_are_the_generator_output():
    # The committed files are reproducible from the code, so metadata and scenes always agree.
    for name, data in sample.sample_files(generate_scenes()).items():
        assert (SAMPLE_DIR / name).read_bytes() == data, f"{name} is stale: run lfvila.sample.write_sample_sources()"


def test_sentences_describe_their_clips_and_quirks_are_there():
    scenes = load_scenes(SAMPLE_DIR / sample.SCENES_NAME)
    metadata = [json.loads(line) for line in (SAMPLE_DIR / sample.METADATA_NAME).read_text().splitlines()]
    assert [m["video_id"] for m in metadata] == [s.video_id for s in scenes]
    assert len({s.video_id for s in scenes}) == len(scenes)
    for scene, meta in zip(scenes, metadata):
        by_id = {f"{scene.video_id}.{c.n}.mp4": c for c in scene.clips}
        for entry in meta["clip"]:
            clip = by_id[entry["clip_id"]]
            assert entry["span"] == [sample.format_timestamp(clip.start), sample.format_timestamp(clip.end)]
            if entry["text"]:
                # The sentence names exactly the colour shown, and the shape.
                named = [c for c in COLOURS if c in entry["text"].split() or f"{c}." in entry["text"]]
                assert named == [clip.colour] and clip.shape in entry["text"]
        colours = [c.colour for c in scene.clips]
        for i in range(len(colours)):
            assert len(set(colours[i:i + 4])) == len(colours[i:i + 4]), "4 consecutive clips must differ"
    quirks = {s.quirk for s in scenes if s.quirk}
    assert len(quirks) == len(sample._QUIRKS)
    assert any(not c.listed for s in scenes for c in s.clips)
    assert any(s.missing_file for s in scenes)
    assert any(len(s.clips) < 4 for s in scenes)
    assert any(s.duration < s.clips[-1].end for s in scenes)
    assert any(c.text == "" for s in scenes for c in s.clips)
    assert any(len(m["clip"]) != len({e["clip_id"] for e in m["clip"]}) for m in metadata)


def test_format_timestamp():
    assert sample.format_timestamp(3725.0456) == "01:02:05.046"
    assert sample.format_timestamp(0.0) == "00:00:00.000"


def test_render_is_exact_deterministic_and_idempotent(tmp_path):
    # The first 4 videos include one whose clip 6 is unlisted (its footage is still drawn).
    first = render_demo_videos(tmp_path / "a", limit=4, workers=2)
    assert len(first.rendered) == 4 and not first.skipped
    assert first.sources == [f"hdvila:{(tmp_path / 'a' / 'sources' / sample.METADATA_NAME).resolve()}"]
    meta_lines = (tmp_path / "a" / "sources" / sample.METADATA_NAME).read_text().splitlines()
    assert len(meta_lines) == 4
    assert sorted(p.name for p in first.videos_dir.iterdir()) == sorted(f"{v}.mp4" for v in first.rendered)

    again = render_demo_videos(tmp_path / "a", limit=4, workers=2)
    assert again.skipped == first.rendered and not again.rendered
    other = render_demo_videos(tmp_path / "b", limit=4, workers=1)
    for vid in first.rendered:
        assert (first.videos_dir / f"{vid}.mp4").read_bytes() == (other.videos_dir / f"{vid}.mp4").read_bytes()

    # Every decoded frame shows its segment's colour at a point away from the shapes and grid.
    scenes = load_scenes(SAMPLE_DIR / sample.SCENES_NAME)[:4]
    for scene in scenes:
        expected = []
        for first_frame, last_frame, clip in sample.segments(scene, 15):
            colour = _rgb(GAP_COLOUR if clip is None else COLOURS[clip.colour])
            expected += [colour] * (last_frame - first_frame)
        with av.open(str(first.videos_dir / f"{scene.video_id}.mp4")) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == len(expected) == round(scene.duration * 15)
        for k, (frame, colour) in enumerate(zip(frames, expected)):
            assert np.abs(frame[8:12, 8:12].reshape(-1, 3).mean(0) - colour).max() < 20, f"{scene.video_id} frame {k}"


def test_changed_scene_is_rerendered(tmp_path, monkeypatch):
    render_demo_videos(tmp_path, limit=1)
    monkeypatch.setattr(sample, "RENDER_VERSION", sample.RENDER_VERSION + 1)
    assert len(render_demo_videos(tmp_path, limit=1).rendered) == 1


def test_missing_ffmpeg_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LFVILA_FFMPEG", str(tmp_path / "no-ffmpeg"))
    with pytest.raises(RuntimeError, match="LFVILA_FFMPEG"):
        render_demo_videos(tmp_path, limit=1)
