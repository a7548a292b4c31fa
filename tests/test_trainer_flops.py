"""TFLOP/s and MFU: FLOPs per sample counted once from the model, the peak table, the log line."""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lfvila.config import load_config
from lfvila.trainer.config import TrainConfig
from lfvila.trainer.flops import device_peak_tflops, peak_tflops_for, training_step_flops

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train_throughput", REPO / "bench" / "train_throughput.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def tiny_trainer(tmp_path, *overrides):
    from lfvila.models.text import load_bert_config
    from lfvila.trainer.loop import Trainer

    cfg = load_config(TrainConfig, REPO / "train" / "tiny.yaml", [
        "data.batch_size=2", f"trainer.out_dir={tmp_path}", "trainer.tensorboard=false", "trainer.loss_log=false",
        "trainer.max_steps=2", "trainer.log_every=2", "trainer.ckpt_every=100", *overrides])
    vocab = load_bert_config(cfg.model.text.bert_dir).vocab_size
    stream = bench._Stream(bench.synthetic_batches(cfg, cfg.task.stage, vocab))
    return Trainer(cfg, loader=stream), stream


def test_training_step_flops_is_the_analytic_count_of_a_linear_layer():
    layer = nn.Linear(16, 32, bias=False)
    x = torch.randn(4, 16)  # no gradient to the input: forward and the weight gradient, 2*m*n*k each
    flops = training_step_flops(lambda: {"loss": layer(x).sum()}, list(layer.parameters()))
    assert flops == 2 * (2 * 4 * 16 * 32)
    assert layer.weight.grad is None  # counting writes no gradient


def test_cpu_fused_attention_is_counted():
    from lfvila.trainer.flops import count_flops

    q, k, v = (torch.randn(1, 2, 8, 4, requires_grad=True) for _ in range(3))  # (B, heads, N, d)
    forward = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    assert forward == 2 * (2 * 1 * 2 * 8 * 8 * 4)  # QK^T and AV
    both = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward())
    assert both == forward * 3.5  # backward: dV, dP, dQ, dK and the recomputed QK^T (torch's formula)


def test_peak_table_by_device_name_and_override():
    assert peak_tflops_for("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops_for("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops_for("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops_for("NVIDIA H100 NVL") == 835.0
    assert peak_tflops_for("NVIDIA H200") == 989.0
    assert peak_tflops_for("NVIDIA GeForce RTX 4090") is None
    assert device_peak_tflops(torch.device("cpu"))[0] is None
    assert device_peak_tflops(torch.device("cpu"), 2.5) == (2.5, "trainer.peak_tflops")
    with pytest.raises(ValueError, match="trainer.peak_tflops"):
        load_config(TrainConfig, REPO / "train" / "tiny.yaml", ["trainer.peak_tflops=0"])


def test_flops_per_sample_equal_flop_counter_over_a_real_training_step(tmp_path, bert_dir):
    trainer, stream = tiny_trainer(tmp_path)
    batches = iter(stream)
    from lfvila.trainer.loop import _Window

    trainer.train_step(batches, _Window())  # counts once, on the first batch
    counted = trainer.flops_per_sample
    assert counted > 0
    with FlopCounterMode(display=False) as counter:  # the trainer's real step: DDP-free forward, .backward()
        trainer.train_step(batches, _Window())
    assert counter.get_total_flops() == counted * 2  # batch 2
    assert trainer.flops_per_sample == counted  # counted once, not again


def test_counting_does_not_change_what_training_computes(tmp_path, bert_dir):
    from lfvila.trainer.loop import _Window

    losses = []
    for skip_count in (False, True):
        trainer, stream = tiny_trainer(tmp_path / str(skip_count))
        if skip_count:
            trainer.flops_per_sample = 1.0
        batches = iter(stream)
        losses.append([trainer.train_step(batches, _Window()) for _ in range(2)])
    for counted, plain in zip(*losses):
        assert {k: v.item() for k, v in counted.items()} == {k: v.item() for k, v in plain.items()}


@pytest.mark.parametrize("peak, mfu", [(None, "MFU n/a"), (1e-3, "MFU ")])
def test_log_line_has_tflops_and_mfu(tmp_path, bert_dir, caplog, peak, mfu):
    trainer, _ = tiny_trainer(tmp_path, f"trainer.peak_tflops={'null' if peak is None else peak}")
    with caplog.at_level(logging.INFO, logger="lfvila.trainer.loop"):
        trainer.fit()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step 2/2")]
    assert len(lines) == 1 and " TFLOP/s | " in lines[0] and mfu in lines[0], lines
    if peak is not None:
        assert "MFU n/a" not in lines[0] and "%" in lines[0].split("MFU ")[1].split(" |")[0]
    assert any("GFLOP per sample" in r.getMessage() for r in caplog.records)
