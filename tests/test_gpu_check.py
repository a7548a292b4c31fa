"""bench/gpu_check.sh: refuses a machine without CUDA with one clear line; reads the trainer's log
line; its whole chain (shards, stage 1, stage 2 from stage 1, 2 processes) runs in --smoke mode."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # its shard writers run in forked processes, which unpickle by name
_spec.loader.exec_module(gpu_check)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine-without-CUDA path")
def test_without_cuda_it_measures_nothing_and_says_so():
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "nothing was measured" in lines[0]
    assert gpu_check.main(["--out", "unused"]) == 1  # the script refuses on its own too


def test_reads_the_trainers_log_line(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        "2026-12-02 15:45:10 INFO lfvila.trainer.loop: flops: 1021 GFLOP per sample (forward + backward, ...)\n"
        "2026-12-02 15:45:11 INFO lfvila.trainer.loop: step 250/300 | loss 7.1 (global 3.9 mtc 3.2) | lr 5e-05 "
        "| 60.1 samples/s | 61.4 TFLOP/s | MFU 6.2% | data wait 40% | gpu mem 30.20G | grad norm 4.1 | skipped 0\n"
        "2026-12-02 15:45:14 INFO lfvila.trainer.loop: step 300/300 | loss 7.0 (global 3.9 mtc 3.1) | lr 0 "
        "| 120.5 samples/s | 123 TFLOP/s | MFU 12.4% | data wait 3% | gpu mem 31.50G | grad norm 4.0 | skipped 0\n")
    assert gpu_check.parse_log(log) == {
        "steps": 300, "samples_per_s": 120.5, "tflops_per_device": 123.0, "mfu": pytest.approx(0.124),
        "data_wait": 0.03, "peak_memory_gb": 31.5, "gflop_per_sample": 1021.0}
    cpu = tmp_path / "cpu.log"
    cpu.write_text("step 2/2 | loss 1 (global 1) | lr 0.0001 | 3.2 samples/s | 0.0128 TFLOP/s | MFU n/a "
                   "| data wait 0% | rss mem 0.63G | skipped 0\n")
    assert gpu_check.parse_log(cpu)["mfu"] is None
    assert "error" in gpu_check.parse_log(tmp_path / "absent.log")


@pytest.mark.slow  # 75 s on the loaded 2-core machine (three short training runs, one of 2 processes)
def test_smoke_chain_runs_end_to_end(tmp_path, bert_dir):
    out = tmp_path / "gc"
    code = gpu_check.main(["--smoke", "--out", str(out), "--steps", "2", "--steps2", "2", "--nccl-steps", "2",
                           "--samples", "16", "--workers", "1"])
    report = json.loads((out / "gpu_check.json").read_text())
    assert code == 0, report
    names = [r["name"] for r in report["runs"]]
    assert names == ["stage 1 (1 process)", "stage 2 (1 process)", "stage 1 (2 processes, gloo)"]
    for r in report["runs"]:
        assert r["exit"] == 0 and r["steps"] == 2 and r["tflops_per_device"] > 0 and r["gflop_per_sample"] > 0
