"""torch.compile of the training forward (trainer.compile) computes what eager does: one
training step's losses, then the next step's (so gradients and the AdamW update agree too)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from lfvila.config import load_config
from lfvila.trainer.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train_throughput", REPO / "bench" / "train_throughput.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def train_two_steps(tmp_path: Path, *overrides: str) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    from lfvila.models.text import load_bert_config
    from lfvila.trainer.loop import Trainer, _Window

    cfg = load_config(TrainConfig, REPO / "train" / "tiny.yaml", [
        "data.batch_size=2", f"trainer.out_dir={tmp_path}", "trainer.tensorboard=false", "trainer.loss_log=false",
        *overrides])
    stream = bench._Stream(bench.synthetic_batches(cfg, 1, load_bert_config(cfg.model.text.bert_dir).vocab_size))
    trainer = Trainer(cfg, loader=stream)
    trainer.flops_per_sample = 1.0  # the count runs uncompiled anyway; not what is tested here
    batches = iter(stream)
    losses = [{k: v.item() for k, v in trainer.train_step(batches, _Window()).items()} for _ in range(2)]
    return losses, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def assert_same_training(eager, compiled, rtol: float, atol: float) -> None:
    (eager_losses, eager_state), (compiled_losses, compiled_state) = eager, compiled
    for e, c in zip(eager_losses, compiled_losses):
        assert e.keys() == c.keys()
        for name in e:
            assert c[name] == pytest.approx(e[name], rel=rtol, abs=atol), (name, e, c)
    worst = max((compiled_state[k].float() - v.float()).abs().max().item() for k, v in eager_state.items())
    assert worst < 10 * atol, worst


@pytest.fixture(scope="module")
def eager(tmp_path_factory, bert_dir):
    return train_two_steps(tmp_path_factory.mktemp("eager"))


def test_compile_wraps_the_training_forward_with_the_configured_backend(tmp_path, bert_dir, monkeypatch):
    """The fast check (no tracing): trainer.compile wraps what the step calls, with the backend asked for."""
    from lfvila.trainer.loop import TaskForward, Trainer

    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: calls.append((module, kw)) or module)
    cfg = load_config(TrainConfig, REPO / "train" / "tiny.yaml", [
        f"trainer.out_dir={tmp_path}", "trainer.compile=true", "trainer.compile_backend=aot_eager"])
    trainer = Trainer(cfg, loader=bench._Stream(iter(())))
    assert len(calls) == 1 and isinstance(calls[0][0], TaskForward) and calls[0][1] == {"backend": "aot_eager"}
    assert trainer.forward_module is calls[0][0]
    with pytest.raises(ValueError, match="trainer.compile_backend"):
        load_config(TrainConfig, REPO / "train" / "tiny.yaml", ["trainer.compile_backend="])


@pytest.mark.slow  # 474 s on the loaded 2-core machine: dynamo tracing of BERT and HTWA dominates
def test_compiled_step_traces_and_matches_eager_without_codegen(eager, tmp_path):
    """The fast equivalent: dynamo and AOT autograd capture the same forward and backward graphs
    (aot_eager runs them without generating code), so the losses agree to rounding."""
    torch._dynamo.reset()
    compiled = train_two_steps(tmp_path, "trainer.compile=true", "trainer.compile_backend=aot_eager")
    assert_same_training(eager, compiled, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # about 12 minutes of tracing and inductor code generation on a loaded 2-core machine
def test_compiled_step_with_inductor_matches_eager(eager, tmp_path, monkeypatch):
    import torch._inductor.config as inductor_config

    # inductor draws its own random numbers (stochastic depth, MTC positions) unless told to use
    # eager's generator; with it, the compiled step sees the same random numbers as eager
    monkeypatch.setattr(inductor_config, "fallback_random", True)
    torch._dynamo.reset()
    compiled = train_two_steps(tmp_path, "trainer.compile=true", "trainer.compile_backend=inductor")
    assert_same_training(eager, compiled, rtol=1e-4, atol=1e-4)
