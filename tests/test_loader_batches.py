"""Loader batches: the batch contract, LF-VILA's sampling rules, transforms, MLM, config checks."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from lfvila.data import DataConfig, batch_to_device, build_loader, normalize_video
from lfvila.data.collate import DeviceCrop
from lfvila.data.tokenize import IGNORE_INDEX, Tokenizer, mask_tokens
from lfvila.data.sampling import SkipSample, frame_members, plan_sample, uniform_frame_indices
from lfvila.data.transforms import (box_to_pixels, random_resized_crop_box, resize_crop_frames, resize_crop_into,
                                    val_crop_box)
from lfvila.testing import COLOURS, model_pixels, synthetic_sample, write_synthetic_shards


def small_cfg(paths, **kw) -> DataConfig:
    base = dict(train_shards=paths, val_shards=paths, batch_size=4, num_workers=0, crop=(24, 40),
                val_resize=(48, 80), max_tokens=16, shuffle_buffer=8)
    base.update(kw)
    return DataConfig(**base)


@pytest.mark.parametrize("resize_on", ["device", "loader"])
def test_batch_contract_stage1_and_stage2(tmp_path, bert_dir, resize_on):
    paths = write_synthetic_shards(tmp_path, n_samples=6, samples_per_shard=3, n_sentences=(2, 6))
    cfg = small_cfg(paths, bert_dir=str(bert_dir), resize_on=resize_on)
    for stage in (1, 2):
        batch = next(iter(build_loader(cfg, "train", stage=stage, epoch_mode=True)))
        b = len(batch["keys"])
        assert b == 4
        if resize_on == "device":  # the decoded 48x80 frames of each sample, and what the device does to them
            assert len(batch["video"]) == b
            assert all(v.dtype == torch.uint8 and v.shape == (3, 32, 48, 80) for v in batch["video"])
            crop = batch["crop"]
            assert isinstance(crop, DeviceCrop) and len(crop.boxes) == len(crop.flips) == b and crop.size == (24, 40)
            assert all(top + h <= 48 and left + w <= 80 for top, left, h, w in crop.boxes)
        else:
            assert batch["video"].dtype == torch.uint8 and batch["video"].shape == (b, 3, 32, 24, 40)
            assert "crop" not in batch
        model_video = batch_to_device(batch, "cpu")["video"]
        assert model_video.dtype == torch.float32 and model_video.shape == (b, 3, 32, 24, 40)
        assert model_video.is_contiguous() and "crop" not in batch_to_device(batch, "cpu")
        for name in ("text_ids", "text_mask"):
            assert batch[name].dtype == torch.long and batch[name].shape == (b, 4, 16)
        assert batch["sentence_mask"].dtype == torch.bool and batch["sentence_mask"].shape == (b, 4)
        assert ("mlm_ids" in batch) == (stage == 2) and ("mlm_labels" in batch) == (stage == 2)
        # A real sentence starts with [CLS]; a padded one is all zeros with a zero mask.
        ids, mask, present = batch["text_ids"], batch["text_mask"], batch["sentence_mask"]
        assert (ids[present][:, 0] == 101).all()
        assert (ids[~present] == 0).all() and (mask[~present] == 0).all()


@pytest.mark.parametrize("resize_on", ["device", "loader"])
def test_sentence_window_and_frames_line_up(tmp_path, bert_dir, resize_on):
    """Validation batches: clip i's 8 frames show the colour its sentence names (no flip, no jitter)."""
    paths = write_synthetic_shards(tmp_path, n_samples=8, samples_per_shard=4, n_sentences=(2, 7),
                                   frames_per_sentence=(1, 12))
    cfg = small_cfg(paths, bert_dir=str(bert_dir), batch_size=8, resize_on=resize_on)
    tok = Tokenizer(str(bert_dir), 16)
    colour_ids = {tok.tokenizer.convert_tokens_to_ids(name): rgb for name, rgb in COLOURS.items()}
    batch = next(iter(build_loader(cfg, "val", epoch_mode=True)))
    video = model_pixels(batch)
    checked = 0
    for b in range(len(batch["keys"])):
        n_real = int(batch["sentence_mask"][b].sum())
        assert 1 <= n_real <= 4
        for i in range(4):
            clip = video[b, :, i * 8:(i + 1) * 8]  # (3, 8, H, W)
            j = min(i, n_real - 1)  # padded slots repeat the last real clip
            word = int(batch["text_ids"][b, j, 4])  # [CLS] the screen is <colour> now [SEP]
            expected = torch.tensor(colour_ids[word], dtype=torch.float32)
            assert torch.allclose(clip.mean(dim=(1, 2, 3)), expected, atol=6), (batch["keys"][b], i)
            checked += 1
    assert checked == 4 * len(batch["keys"])


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("crop", [(24, 40), (32, 56)])
def test_resizing_on_the_device_equals_resizing_in_the_loader(tmp_path, bert_dir, antialias, crop):
    """Same seed, same samples, same crops and flips: the model sees the same pixels (within the
    host path's uint8 rounding) whichever side resizes. Frames of two sizes, the smaller shard
    first. A (24, 40) crop lets the 60x100 frames decode at half size (DCT); at (32, 56) they
    decode at full size, so one batch holds frames of two sizes."""
    paths = (write_synthetic_shards(tmp_path, n_samples=3, samples_per_shard=3, split="small", size=(48, 80))
             + write_synthetic_shards(tmp_path, n_samples=3, samples_per_shard=3, split="large", size=(60, 100)))
    videos, batches = {}, {}
    for split in ("train", "val"):
        for resize_on in ("device", "loader"):
            cfg = small_cfg(paths, bert_dir=str(bert_dir), batch_size=6, resize_on=resize_on, antialias=antialias,
                            crop=crop)
            batch = next(iter(build_loader(cfg, split, epoch_mode=True)))
            videos[split, resize_on], batches[split, resize_on] = model_pixels(batch), batch
        assert batches[split, "device"]["keys"] == batches[split, "loader"]["keys"]
        diff = (videos[split, "device"] - videos[split, "loader"]).abs()
        assert diff.max() <= 2.5 and diff.mean() < 0.6, (split, float(diff.max()), float(diff.mean()))
    flips = batches["train", "device"]["crop"].flips
    assert any(flips) and not all(flips)  # both branches of the flip were compared
    sizes = {key: tuple(v.shape) for key, v in zip(batches["val", "device"]["keys"], batches["val", "device"]["video"])}
    large = (3, 32, 30, 50) if crop == (24, 40) else (3, 32, 60, 100)  # DCT half size, or full
    assert sizes == {**{f"small_{i:06d}": (3, 32, 48, 80) for i in range(3)},
                     **{f"large_{i:06d}": large for i in range(3)}}


def test_window_is_consecutive_and_random(bert_dir):
    rng = random.Random(3)
    raw = synthetic_sample("k", rng, n_sentences=9, frames_per_sentence=(2, 4))
    meta = json.loads(raw["json"])
    for i, s in enumerate(meta["sentences"]):
        s["text"] = f"sentence {i}"  # unique texts, so the window's position can be read back
    raw = {"__key__": "k", "__url__": "u", **raw, "json": json.dumps(meta).encode()}
    cfg = DataConfig(bert_dir=str(bert_dir))
    sentences = meta["sentences"]
    starts = set()
    for seed in range(40):
        plan = plan_sample(raw, cfg, np.random.default_rng(seed), True, (seed,))
        first = [s["text"] for s in sentences].index(plan.texts[0])
        assert plan.texts == [s["text"] for s in sentences[first:first + 4]]
        starts.add(first)
        assert len(plan.frame_ids) == 32
    assert len(starts) > 3  # the window moves over the long video


def test_uniform_frame_indices():
    assert uniform_frame_indices(10, 26, 8) == [10, 12, 14, 16, 18, 20, 22, 24]
    assert uniform_frame_indices(0, 3, 8) == [0, 0, 0, 1, 1, 1, 2, 2]  # fewer frames: repeats
    assert uniform_frame_indices(5, 6, 8) == [5] * 8
    for n in range(0, 300, 7):  # the same rounding as LF-VILA's numpy formula
        for k in (1, 3, 7, 8, 16):
            assert uniform_frame_indices(4, 4 + n, k) == (4 + np.floor(np.linspace(0, n, k, endpoint=False))).tolist()


def test_frame_members_exact_in_both_layouts():
    raw = {"__key__": "k", "__url__": "u", **synthetic_sample("k", random.Random(0), n_sentences=2)}
    n = sum(name.endswith(".jpg") for name in raw)
    assert frame_members(raw, n) == tuple(f"{i:04d}.jpg" for i in range(n))  # the shard stage's layout
    other = {"__key__": "k", "__url__": "u", "json": raw["json"], "txt": b"extra member",
             **{f"{i}.jpg": raw[f"{i:04d}.jpg"] for i in range(n)}}  # unpadded names, one more member
    assert frame_members(other, n) == [f"{i}.jpg" for i in range(n)]
    for broken in ({k: v for k, v in raw.items() if k != "0001.jpg"}, {**raw, "9999.jpg": b""}):
        with pytest.raises(SkipSample, match="frame_count_mismatch"):
            frame_members(broken, n)
    with pytest.raises(SkipSample, match="frame_count_mismatch"):
        frame_members(raw, n + 1)


def test_crop_boxes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(rng, (240, 428), (192, 320), (0.8, 1.0), (3 / 4, 4 / 3))
        assert 0.8 - 0.02 <= h * w <= 1.0 and top >= 0 and left >= 0 and top + h <= 1 + 1e-9 and left + w <= 1 + 1e-9
    assert box_to_pixels(val_crop_box((240, 428), 0.9), (240, 428)) == (12, 22, 216, 385)


def test_normalize_video_matches_formula():
    video = torch.randint(0, 256, (2, 3, 4, 5, 6), dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)
    torch.testing.assert_close(normalize_video(video), (video.float() / 255 - mean) / std)
    assert normalize_video(video, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError):
        normalize_video(video[0])


def test_tokenizer_equals_the_hugging_face_call(bert_dir, shared_data):
    """The loader's direct use of the Rust tokenizer gives the ids and masks of BertTokenizerFast's
    ``padding="max_length", truncation=True`` call (real captions; some longer than L)."""
    captions = json.loads((shared_data / "annotations/activitynet_captions/val_1.json").read_text())
    texts = [s.strip() for v in list(captions.values())[:300] for s in v["sentences"]]
    texts += ["", "Ünïcödé  ÇAFÉ – naïve “quotes”", "word " * 80]
    tok = Tokenizer(str(bert_dir), 16)
    ids, mask = tok(texts)
    ref = tok.tokenizer(texts, padding="max_length", truncation=True, max_length=16, return_tensors="np")
    assert ids.shape == (len(texts), 16) and (mask.sum(1) == 16).sum() > 10  # truncation happened
    assert (ids == ref["input_ids"]).all() and (mask == ref["attention_mask"]).all()
    assert tok([])[0].shape == (0, 16)


def test_mlm_masking_rates(bert_dir):
    tok = Tokenizer(str(bert_dir), 50)
    ids, mask = tok(["the screen is red now and then it turns into a very bright shade of blue"] * 400)
    masked, labels = mask_tokens(ids, mask, tok, 0.15, np.random.default_rng(0))
    special = np.isin(ids, tok.special_ids) | (mask == 0)
    chosen = labels != IGNORE_INDEX
    assert not chosen[special].any()  # [CLS], [SEP] and padding are never predicted
    assert (labels[chosen] == ids[chosen]).all()
    assert abs(chosen.sum() / (~special).sum() - 0.15) < 0.02
    as_mask = (masked == tok.mask_id) & chosen
    kept = (masked == ids) & chosen
    assert abs(as_mask.sum() / chosen.sum() - 0.8) < 0.04
    assert abs(kept.sum() / chosen.sum() - 0.1) < 0.04  # (a random token can equal the original rarely)
    assert (masked[~chosen] == ids[~chosen]).all()


def test_too_few_frames_is_a_skip(bert_dir):
    raw = {"__key__": "k", **synthetic_sample("k", random.Random(0), n_sentences=4, frames_per_sentence=(2, 2))}
    cfg = DataConfig(bert_dir=str(bert_dir), min_frames_per_sentence=3)
    with pytest.raises(SkipSample) as info:
        plan_sample(raw, cfg, np.random.default_rng(0), True, (0,))
    assert info.value.reason == "too_few_frames"


@pytest.mark.parametrize("field,value", [
    ("batch_size", 0), ("crop", (192,)), ("scale", (0.9, 0.5)), ("val_crop_fraction", 1.5),
    ("mlm_probability", 1.0), ("train_shards", 3), ("max_tokens", 1), ("num_workers", -1),
    ("min_frames_per_sentence", 9), ("resize_on", "gpu"),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DataConfig(**{field: value})


def test_build_loader_checks(tmp_path, bert_dir):
    paths = write_synthetic_shards(tmp_path, n_samples=2, samples_per_shard=1)
    with pytest.raises(ValueError, match="val_shards"):
        build_loader(DataConfig(train_shards=paths, bert_dir=str(bert_dir)), "val")
    with pytest.raises(ValueError, match="resampled"):  # 2 shards cannot feed 4 streams forever
        build_loader(small_cfg(paths, num_workers=2, bert_dir=str(bert_dir)), "train", world_size=2)
    with pytest.raises(ValueError, match="stage"):
        build_loader(small_cfg(paths, bert_dir=str(bert_dir)), "train", stage=3)


@pytest.mark.parametrize("flip", [False, True])
def test_opencv_resize_path_matches_torch(flip):
    """The loader's OpenCV crop/resize/flip equals torch's bilinear (align_corners=False) within
    rounding, and repeated source frames are copies."""
    frames = np.random.default_rng(0).integers(0, 256, (5, 60, 100, 3), dtype=np.uint8)
    ids = [0, 0, 1, 2, 3, 4, 4, 4]
    box = (0.1, 0.05, 0.8, 0.9)
    out = resize_crop_into(frames, ids, box, flip, np.zeros((8, 24, 40, 3), np.uint8))
    ref = resize_crop_frames(torch.from_numpy(frames), box, (24, 40), flip).permute(0, 2, 3, 1).numpy()[ids]
    assert np.abs(out.astype(int) - ref).max() <= 1
    assert (out[0] == out[1]).all() and (out[5] == out[7]).all()


@pytest.mark.parametrize("workers", [0, 2])
def test_loading_leaves_torch_global_rng_alone(tmp_path, bert_dir, workers):
    # The trainer's random stream (dropout, MTC draws) must not depend on when the loader starts.
    paths = write_synthetic_shards(tmp_path, n_samples=4, samples_per_shard=2)
    cfg = small_cfg(paths, bert_dir=str(bert_dir), num_workers=workers, batch_size=2)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    next(iter(build_loader(cfg, "train")))
    assert torch.equal(torch.get_rng_state(), before)
