"""Training throughput of LF-VILA stage 1 and stage 2: samples/s, peak memory, TFLOP/s, MFU.

Runs the trainer's own step (forward, backward, clipping, AdamW; bf16 autocast on GPU) on
synthetic batches already in memory, so the number is the model's training rate, not the
loader's (bench/loader_throughput.py measures that). FLOPs per step come from
``torch.utils.flop_counter`` over one real forward + backward, counted by the trainer as for its
log line; MFU divides the achieved FLOP/s by the device's dense bf16 peak (``lfvila.trainer.flops``).

Examples:
  python bench/train_throughput.py --config train/stage1_paper.yaml --stage 1          # one GPU
  python bench/train_throughput.py --config train/stage2_paper.yaml --stage 2
  python bench/train_throughput.py --config train/tiny.yaml --stage 1 --steps 3 --warmup 1   # CPU smoke
"""
from __future__ import annotations

import argparse
import json
import time

import torch

# Frames as the shard stage stores them by default (240p, 16:9): what a `resize_on: device` batch
# carries to the device, where batch_to_device crops and resizes them to the crop size.
STORED_HW = (240, 426)


def synthetic_batches(cfg, stage: int, vocab_size: int, seed: int = 0):
    """An endless stream of one fixed loader-format batch (uint8 video, token ids, masks; with
    ``resize_on: device`` stored-size frames and a random DeviceCrop, as the loader makes them)."""
    import numpy as np

    from lfvila.data.collate import DeviceCrop
    from lfvila.data.transforms import box_to_pixels, random_resized_crop_box

    gen = torch.Generator().manual_seed(seed)
    b, m, length = cfg.data.batch_size, cfg.data.n_sentences, cfg.data.max_tokens
    h, w = STORED_HW if cfg.data.resize_on == "device" else cfg.data.crop
    batch = {
        "video": torch.randint(0, 256, (b, 3, cfg.data.n_frames, h, w), dtype=torch.uint8, generator=gen),
        "text_ids": torch.randint(1000, vocab_size, (b, m, length), generator=gen),
        "text_mask": torch.ones(b, m, length, dtype=torch.long),
        "sentence_mask": torch.ones(b, m, dtype=torch.bool),
        "keys": [f"synthetic_{i}" for i in range(b)],
    }
    batch["text_ids"][:, :, 0] = 101  # [CLS]
    if cfg.data.resize_on == "device":
        rng = np.random.default_rng(seed)
        boxes = [box_to_pixels(random_resized_crop_box(rng, STORED_HW, cfg.data.crop, cfg.data.scale, cfg.data.ratio),
                               STORED_HW) for _ in range(b)]
        batch["crop"] = DeviceCrop(tuple(boxes), tuple(i % 2 == 0 for i in range(b)), cfg.data.crop, cfg.data.antialias)
        batch["video"] = list(batch["video"])  # one (3, T, h, w) per sample, as the loader gives them
    if stage == 2:
        labels = torch.full_like(batch["text_ids"], -100)
        masked = torch.rand(b, m, length, generator=gen) < 0.15
        labels[masked] = batch["text_ids"][masked]
        batch["mlm_ids"] = batch["text_ids"].masked_fill(masked, 103)  # [MASK]
        batch["mlm_labels"] = labels
    while True:
        yield batch


class _Stream:
    """Loader stand-in with the loader API the trainer uses."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return self.batches

    def state_dict(self):
        return {}

    def counters(self):
        return {}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--stage", type=int, choices=[1, 2], default=1)
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile, cudnn autotune)")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)

    from lfvila.config import load_config
    from lfvila.models.text import load_bert_config
    from lfvila.trainer.config import TrainConfig
    from lfvila.trainer.loop import Trainer, _Window

    overrides = [f"task.stage={args.stage}", "trainer.tensorboard=false", "trainer.loss_log=false",
                 "trainer.init_from=null", *args.overrides]
    cfg = load_config(TrainConfig, args.config, overrides)
    vocab = load_bert_config(cfg.model.text.bert_dir).vocab_size
    stream = _Stream(synthetic_batches(cfg, args.stage, vocab))
    trainer = Trainer(cfg, loader=stream)
    batches = iter(stream)
    device = trainer.ctx.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    trainer.train_step(batches, _Window())  # the first step counts the FLOPs per sample (the log line's)
    flops_per_step = trainer.flops_per_sample * cfg.data.batch_size * cfg.trainer.grad_accum
    for _ in range(args.warmup):
        trainer.train_step(batches, _Window())
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step(batches, _Window())
    sync()
    elapsed = time.perf_counter() - start
    samples = args.steps * cfg.data.batch_size * cfg.trainer.grad_accum
    achieved = flops_per_step * args.steps / elapsed / 1e12
    peak = trainer.peak_tflops  # the table of lfvila.trainer.flops, or trainer.peak_tflops
    result = {
        "config": args.config, "stage": args.stage, "overrides": args.overrides,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": cfg.trainer.precision if device.type == "cuda" else "fp32",
        "batch_per_step": cfg.data.batch_size * cfg.trainer.grad_accum,
        "frames": cfg.data.n_frames, "crop": list(cfg.data.crop),
        "steps_timed": args.steps, "seconds": round(elapsed, 3),
        "samples_per_s": round(samples / elapsed, 3),
        "gflop_per_sample": round(flops_per_step / (cfg.data.batch_size * cfg.trainer.grad_accum) / 1e9, 2),
        "achieved_tflops": round(achieved, 3),
        "mfu": round(achieved / peak, 4) if peak else None,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
