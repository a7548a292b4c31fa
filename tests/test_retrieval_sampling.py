"""Retrieval samples (data.sampling=whole_video): frames over the whole video, the paragraph merged
to at most paragraph_sentences sentences, padded sentences masked. Hand-made inputs."""
from __future__ import annotations

import json
import random
import tarfile

import numpy as np
import pytest
import torch

from lfvila.data import DataConfig, build_loader
from lfvila.data.sampling import merge_paragraph, plan_sample, whole_video_frame_indices
from lfvila.testing import COLOURS, model_pixels, synthetic_sample, write_synthetic_shards


class FixedDraws:
    """A stand-in generator: records the ``integers(low, high)`` calls and answers given values."""

    def __init__(self, *values: int):
        self.values, self.calls = list(values), []

    def integers(self, low, high):
        self.calls.append((low, high))
        return self.values.pop(0)


def test_eval_frames_are_a_fixed_linspace_over_every_frame():
    assert whole_video_frame_indices(10, 4, None) == [0, 3, 6, 9]
    assert whole_video_frame_indices(11, 4, None) == [0, 3, 6, 10]  # 0, 3.33, 6.67, 10 truncated
    assert whole_video_frame_indices(2, 4, None) == [0, 0, 0, 1]  # fewer frames than wanted: repeats
    assert whole_video_frame_indices(1, 3, None) == [0, 0, 0]


def test_train_frames_jitter_both_ends_within_one_interval():
    draws = FixedDraws(1, 8)
    # n=10, t=4: interval 10 // 3 = 3, start in [0, 3], end in [6, 9]; linspace(1, 8, 4) = 1, 3.33, 5.67, 8
    assert whole_video_frame_indices(10, 4, draws) == [1, 3, 5, 8]
    assert draws.calls == [(0, 4), (6, 10)]  # numpy's high is exclusive
    draws = FixedDraws(3, 96)
    assert whole_video_frame_indices(100, 32, draws)[0] == 3 and draws.calls == [(0, 4), (96, 100)]
    draws = FixedDraws(0, 0)  # t = 2: interval = n, the lower end bound is clamped at 0, not -1
    whole_video_frame_indices(5, 2, draws)
    assert draws.calls == [(0, 6), (0, 5)]
    rng = np.random.default_rng(0)
    starts, ends = set(), set()
    for _ in range(200):
        idx = whole_video_frame_indices(100, 32, rng)
        assert idx == sorted(idx) and len(idx) == 32
        starts.add(idx[0])
        ends.add(idx[-1])
    assert starts == {0, 1, 2, 3} and ends == {96, 97, 98, 99}


def test_paragraph_merges_the_shortest_adjacent_pair_first():
    texts = ["a", "bb", "c", "dddd", "e"]
    assert merge_paragraph(texts, 5) == texts and merge_paragraph(texts[:2], 8) == texts[:2]
    # pair lengths 3, 3, 5, 5 -> the first pair; then "a bb"+"c" = 5, "c"+"dddd" = 5, ... -> the first again
    assert merge_paragraph(texts, 4) == ["a bb", "c", "dddd", "e"]
    assert merge_paragraph(texts, 3) == ["a bb c", "dddd", "e"]
    # lengths in characters, spaces included: "xx yy"+"z" = 6, "z"+"qqqq" = 5, "qqqq"+"long sentence" = 17
    assert merge_paragraph(["xx yy", "z", "qqqq", "long sentence"], 3) == ["xx yy", "z qqqq", "long sentence"]
    assert merge_paragraph(["one", "two", "three"], 1) == ["one two three"]
    with pytest.raises(ValueError):
        merge_paragraph(texts, 0)


def test_fuzz_merge_keeps_every_word_in_order():
    from hypothesis import given, strategies as st

    @given(st.lists(st.text(alphabet="ab ", min_size=1, max_size=6), min_size=1, max_size=14), st.integers(1, 9))
    def check(texts, limit):
        merged = merge_paragraph(texts, limit)
        assert len(merged) == min(len(texts), limit)
        assert " ".join(merged) == " ".join(texts)

    check()


def cfg(**kw) -> DataConfig:
    base = dict(batch_size=4, num_workers=0, crop=(24, 40), val_resize=(48, 80), max_tokens=16, shuffle_buffer=8,
                n_sentences=4, frames_per_sentence=2, sampling="whole_video", paragraph_sentences=8)
    base.update(kw)
    return DataConfig(**base)


def test_plan_takes_the_whole_paragraph_and_frames_over_the_whole_video():
    raw = synthetic_sample("k", random.Random(5), n_sentences=10, frames_per_sentence=(2, 4))
    meta = json.loads(raw["json"])
    n = len(meta["frame_times"])
    plan = plan_sample(raw, cfg(), np.random.default_rng(0), train=False, mlm_seed=(0,))
    texts = [s["text"] for s in meta["sentences"]]
    assert plan.texts == merge_paragraph(texts, 8) and len(plan.texts) == 8
    assert " ".join(plan.texts) == " ".join(texts)
    wanted = np.linspace(0, n - 1, 8).astype(int).tolist()
    distinct = sorted(set(wanted))
    assert [distinct[i] for i in plan.frame_ids] == wanted
    assert plan.jpegs == [raw[f"{i:04d}.jpg"] for i in distinct]
    train = plan_sample(raw, cfg(), np.random.default_rng(0), train=True, mlm_seed=(0,))
    assert train.texts == plan.texts  # training jitters the frames, never the text


def test_batches_hold_the_paragraph_slots_with_padding_masked_and_frames_of_each_sentence(tmp_path, bert_dir):
    paths = write_synthetic_shards(tmp_path, n_samples=8, samples_per_shard=4, n_sentences=(2, 11),
                                   frames_per_sentence=(2, 5))
    c = cfg(train_shards=paths, val_shards=paths, bert_dir=str(bert_dir), batch_size=8)
    batch = next(iter(build_loader(c, "val", epoch_mode=True)))
    ids, mask, present = batch["text_ids"], batch["text_mask"], batch["sentence_mask"]
    assert ids.shape == mask.shape == (8, 8, 16) and present.shape == (8, 8)
    metas = {}
    for path in paths:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    metas[member.name[:-5]] = json.loads(tar.extractfile(member).read())
    counts = [min(len(metas[k]["sentences"]), 8) for k in batch["keys"]]
    assert present.sum(dim=1).tolist() == counts and any(len(metas[k]["sentences"]) > 8 for k in batch["keys"])
    assert all(present[b, :n].all() and not present[b, n:].any() for b, n in enumerate(counts))
    assert (ids[present][:, 0] == 101).all()
    assert (ids[~present] == 0).all() and (mask[~present] == 0).all()
    # Frame t of the batch is stored frame linspace(0, n-1, 8)[t]: it shows its sentence's colour.
    video = model_pixels(batch)  # (B, 3, 8, H, W)
    assert video.shape[2] == 8
    for b, key in enumerate(batch["keys"]):
        meta = metas[key]
        for t, frame in enumerate(np.linspace(0, len(meta["frame_times"]) - 1, 8).astype(int)):
            sentence = next(s for s in meta["sentences"] if s["frame_start"] <= frame < s["frame_end"])
            expected = torch.tensor(COLOURS[sentence["text"].split()[3]], dtype=torch.float32)
            assert torch.allclose(video[b, :, t].mean(dim=(1, 2)), expected, atol=6), (key, t)


@pytest.mark.parametrize("bad", [dict(sampling="random"), dict(paragraph_sentences=0)])
def test_bad_sampling_settings_name_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        cfg(**bad)


def test_more_paragraph_slots_than_segment_embeddings_is_refused():
    from lfvila.config import load_config
    from lfvila.trainer.config import TrainConfig
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "train" / "tiny.yaml"
    load_config(TrainConfig, recipe, ["data.sampling=whole_video", "data.paragraph_sentences=8"])
    with pytest.raises(ValueError, match="paragraph_sentences"):
        load_config(TrainConfig, recipe, ["data.sampling=whole_video", "data.paragraph_sentences=9"])
