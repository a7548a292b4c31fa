"""The loader on real shards: built by the shard stage from ../shared/data videos."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lfvila.build_config import BuildConfig
from lfvila.config import load_config
from lfvila.data import DataConfig, build_loader
from lfvila.data.transforms import box_to_pixels, val_crop_box
from lfvila.shards.build import build_shards
from lfvila.shards.fixtures import sentences_every, write_longform
from lfvila.shards.read import iter_samples
from lfvila.testing import model_pixels

# (key, video in videos/natural, sentence length s, span end s): an h264 240p video with 8+
# frames per sentence and a 120p MJPEG one with fewer frames than 8 per sentence (repeats).
VIDEOS = [("pancake", "decord__flipping_a_pancake", 2.0, 10.0), ("album", "kphotoalbum__movie", 0.9, 4.5)]


@pytest.fixture(scope="module")
def real_shards(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    rows = [{"key": key, "video_id": vid, "sentences": sentences_every(0.0, end, step, vid, text=f"{key} sentence")}
            for key, vid, step, end in VIDEOS]
    write_longform(out / "longform.parquet", rows)
    cfg = load_config(BuildConfig, None, ["shards.samples_per_shard=1"])
    build_shards(cfg, out, shared_data / "videos" / "natural", workers=1)
    tars = sorted(str(p) for p in (out / "shards").glob("train-*.tar"))
    assert len(tars) == 2
    return tars


@pytest.mark.parametrize("resize_on", ["device", "loader"])
def test_real_shards_validation_batch_matches_an_independent_reading(real_shards, bert_dir, resize_on):
    """Every clip slot holds frames of its own sentence's span, and the pixels the model gets equal
    a PIL reading of the stored JPEG at LF-VILA's validation geometry (within resampling error).
    The two videos have different frame sizes (240p and 120p) in one batch."""
    cfg = DataConfig(val_shards=real_shards, batch_size=2, num_workers=0, bert_dir=str(bert_dir), resize_on=resize_on)
    batch = next(iter(build_loader(cfg, "val", epoch_mode=True)))
    assert sorted(batch["keys"]) == ["album", "pancake"]
    video = model_pixels(batch)
    assert video.shape == (2, 3, 32, 192, 320)
    stored = {s["key"]: s for tar in real_shards for s in iter_samples(tar)}
    for b, key in enumerate(batch["keys"]):
        meta, frames = stored[key]["meta"], stored[key]["frames"]
        sentences = meta["sentences"]
        assert len(sentences) >= 4 and batch["sentence_mask"][b].all()
        # Which window? The one whose first sentence has the batch's first token row.
        starts = [i for i, s in enumerate(sentences)
                  if batch["text_ids"][b, 0].tolist() == _token_ids(bert_dir, s["text"])]
        assert len(starts) == 1
        start = starts[0]
        for i in range(4):
            s = sentences[start + i]
            n = s["frame_end"] - s["frame_start"]
            assert n >= 1
            for j in (0, 7):  # first and last of the clip's 8 frames: linspace, endpoint excluded
                index = s["frame_start"] + int(np.floor(j * n / 8))
                assert s["start"] - 1e-3 <= meta["frame_times"][index] <= s["end"] + 1e-3
                expected = _pil_val_frame(frames[index])
                got = video[b, :, i * 8 + j].permute(1, 2, 0).numpy()
                assert np.abs(got - expected).mean() < 4.0, (key, i, j)


def test_real_shards_train_stream_resumes(real_shards, bert_dir):
    cfg = DataConfig(train_shards=real_shards, batch_size=1, num_workers=2, bert_dir=str(bert_dir),
                     shuffle_buffer=2, crop=(96, 160))
    full = build_loader(cfg, "train")
    it = iter(full)
    reference = [model_pixels(next(it)) for _ in range(5)]
    del it
    part = build_loader(cfg, "train")
    it = iter(part)
    head = [model_pixels(next(it)) for _ in range(3)]
    del it
    resumed = build_loader(cfg, "train")
    resumed.load_state_dict(part.state_dict())
    it = iter(resumed)
    tail = [model_pixels(next(it)) for _ in range(2)]
    assert all((a == b).all() for a, b in zip(reference, head + tail))


def _token_ids(bert_dir, text: str) -> list[int]:
    from transformers import BertTokenizerFast

    ids = BertTokenizerFast.from_pretrained(str(bert_dir))(text)["input_ids"]
    return ids + [0] * (50 - len(ids))


def _pil_val_frame(jpeg: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    top, left, h, w = box_to_pixels(val_crop_box((240, 428), 0.9), (image.height, image.width))
    crop = image.resize((320, 192), Image.BILINEAR, box=(left, top, left + w, top + h))
    return np.asarray(crop, dtype=np.float32)
