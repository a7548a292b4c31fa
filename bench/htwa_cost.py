"""Cost of the HTWA video encoder vs full temporal windows vs a fixed window of 2 frames.

For each (temporal windows, frames) configuration of the paper encoder, a fresh subprocess
measures:

* FLOPs with ``torch.utils.flop_counter.FlopCounterMode`` (on the meta device, so counting costs
  no compute): matmul + conv GFLOPs and the share that is attention (QK^T and AV);
* wall time of the measured pass (best of ``--repeats`` after ``--warmup`` passes);
* peak extra memory of the first pass: on CPU the process's peak RSS (``VmHWM``, reset through
  ``/proc/self/clear_refs`` once the model and the input exist) minus its RSS at that point; on
  CUDA ``max_memory_allocated`` minus the allocation before the pass.

CPU default: forward only, fp32, batch 1, under ``torch.inference_mode``. On a GPU:
``--device cuda --dtype bf16`` measures forward + backward (``--mode train``) under bf16 autocast
and reports achieved TFLOP/s (FLOPs of forward + backward / time).

    python bench/htwa_cost.py                                  # CPU, 32/64/96 frames, 3 variants
    python bench/htwa_cost.py --device cuda --dtype bf16 --batch 4 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = ("htwa", "full", "fixed2")


def windows_for(variant: str, frames: int, paper_windows):
    """Temporal windows per stage: the paper's HTWA ones, all T (full), or all 2."""
    if variant == "htwa":
        return paper_windows
    t = frames if variant == "full" else 2
    return tuple((t, h, w) for _, h, w in paper_windows)


def count_flops(cfg, batch: int, frames: int, height: int, width: int, train: bool) -> dict[str, float]:
    """GFLOPs of one pass on the meta device, split into attention and everything else."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lfvila.models.video import VideoEncoder
    from lfvila.trainer.flops import register_cpu_sdpa_flops

    register_cpu_sdpa_flops()  # the CPU fused kernel has no formula in torch's table
    with torch.device("meta"):
        model = VideoEncoder(cfg)
        video = torch.empty(batch, 3, frames, height, width, requires_grad=False)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(video)
        if train:
            (out.final.sum() + out.clip_source.sum()).backward()
    total = attention = 0
    for op, flops in counter.get_flop_counts()["Global"].items():
        total += flops
        name = str(op)
        # Attention = fused SDPA kernels, or bmm from SDPA's math fallback (linears are mm/addmm).
        if "attention" in name or "bmm" in name:
            attention += flops
    return {"gflops": total / 1e9, "attention_gflops": attention / 1e9}


def proc_status_bytes(field: str) -> int:
    """VmRSS (resident now) or VmHWM (resident high-water mark) of this process, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux: clear_refs 5) so the peak counts this pass only."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # no reset: VmHWM still includes construction, which then slightly under-reports


def measure(args) -> dict:
    """Child process: one configuration, printed as one JSON line."""
    import torch

    from lfvila.models.video import VideoEncoder, VideoEncoderConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    paper = VideoEncoderConfig.paper()
    # The local clip tap stays at stage 3 in every variant (uniform windows have no "first stage
    # whose temporal window exceeds 8"); it costs the same ~2 GFLOPs per 32 frames everywhere.
    cfg = VideoEncoderConfig.paper(windows=windows_for(args.variant, args.frames, paper.windows),
                                   local_tap_stage=paper.tap_stage, grad_checkpointing=args.checkpointing)
    device = torch.device(args.device)
    train = args.mode == "train"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = VideoEncoder(cfg).to(device).train(train)
    if args.dtype == "bf16" and device.type == "cpu":
        model = model.to(dtype)  # CPU: plain bf16 weights; CUDA: fp32 weights under autocast
    video = torch.randn(args.batch, 3, args.frames, args.height, args.width, device=device)

    def run_once():
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda" and dtype != torch.float32):
            if train:
                out = model(video.to(dtype) if device.type == "cpu" else video)
                (out.final.float().sum() + out.clip_source.float().sum()).backward()
                model.zero_grad(set_to_none=True)
            else:
                with torch.inference_mode():
                    model(video.to(dtype) if device.type == "cpu" else video)
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
        base = proc_status_bytes("VmRSS")
    times, peak = [], None
    for i in range(args.warmup + args.repeats):  # warm-up passes build the mask caches
        start = time.perf_counter()
        run_once()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
        if peak is None:
            # Memory of the first pass only: on CPU, later passes add glibc heap fragmentation to
            # the RSS high-water mark (up to +0.17 GB here) without holding more live tensors.
            peak = (torch.cuda.max_memory_allocated() if device.type == "cuda" else proc_status_bytes("VmHWM")) - base
    result = {
        "variant": args.variant, "frames": args.frames, "windows_t": [w[0] for w in cfg.windows],
        "device": args.device, "dtype": args.dtype, "mode": args.mode, "batch": args.batch,
        "height": args.height, "width": args.width, "threads": torch.get_num_threads(),
        "seconds": min(times), "peak_extra_gb": peak / 1e9,
    }
    result.update(count_flops(cfg, args.batch, args.frames, args.height, args.width, train))
    result["tflops_per_s"] = result["gflops"] / 1e3 / result["seconds"]
    return result


def table(rows: list[dict]) -> str:
    lines = ["| temporal windows | frames | GFLOPs (matmul+conv) | of which attention | time (s) | TFLOP/s | peak extra memory (GB) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['frames']} | failed: {r['error']} | | | | |")
            continue
        windows = "HTWA (" + ",".join(map(str, r["windows_t"])) + ")" if r["variant"] == "htwa" else r["variant"]
        lines.append(f"| {windows} | {r['frames']} | {r['gflops']:.0f} | {r['attention_gflops']:.1f} | "
                     f"{r['seconds']:.2f} | {r['tflops_per_s']:.3f} | {r['peak_extra_gb']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 64, 96])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--mode", choices=("forward", "train"), default=None,
                        help="forward (default on CPU) or forward+backward (default on CUDA)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing per stage")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes first (their memory counts)")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes; the best is reported")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--json", help="also write all results to this JSON file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.mode = args.mode or ("train" if args.device.startswith("cuda") else "forward")

    if args.child:
        args.frames = args.frames[0]
        print(json.dumps(measure(args)), flush=True)
        return 0

    rows = []
    for frames in args.frames:
        for variant in args.variants:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--variant", variant,
                   "--frames", str(frames), "--height", str(args.height), "--width", str(args.width),
                   "--batch", str(args.batch), "--device", args.device, "--dtype", args.dtype,
                   "--mode", args.mode, "--warmup", str(args.warmup), "--repeats", str(args.repeats),
                   "--threads", str(args.threads)]
            if args.checkpointing:
                cmd.append("--checkpointing")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                # A configuration that does not fit (e.g. out of memory) is a row, not a crash.
                reason = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
                rows.append({"variant": variant, "frames": frames, "error": reason[:120]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
