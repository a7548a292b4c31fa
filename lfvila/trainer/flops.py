"""FLOPs of a training step and the device's peak, for the TFLOP/s and MFU of the log line.

As torchtitan reports them: the model's FLOPs per sample are counted once (one forward and
backward of a real batch under ``torch.utils.flop_counter.FlopCounterMode``, which counts
matmuls, convolutions and attention: ``2 * m * n * k`` per matmul, backward included); the
achieved TFLOP/s of a device is that count times the device's samples per second; MFU divides
it by the device's dense bf16 peak.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense (no 2:4 sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets: A100
# (SXM and PCIe) 312; H100 SXM 989 (the sheet's 1,979 is with sparsity), H100 NVL 835, H100 PCIe
# 756; H200 SXM 989, H200 NVL 835. The same figures as torchtitan's get_peak_flops. Matched as
# substrings of torch.cuda.get_device_name(), most specific first (e.g. "NVIDIA H100 80GB HBM3").
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
)


def peak_tflops_for(device_name: str) -> float | None:
    """The dense bf16 peak of a device by its name, or None when the table does not know it."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


def device_peak_tflops(device: torch.device, override: float | None = None) -> tuple[float | None, str]:
    """(peak TFLOP/s, where it comes from): ``override`` (``trainer.peak_tflops``) first, then the table
    for a CUDA device; a CPU (or an unknown GPU) has none unless given."""
    if override is not None:
        return override, "trainer.peak_tflops"
    if device.type != "cuda":
        return None, "no peak known for CPU: set trainer.peak_tflops"
    name = torch.cuda.get_device_name(device)
    peak = peak_tflops_for(name)
    if peak is None:
        return None, f"no peak known for {name!r}: set trainer.peak_tflops"
    return peak, f"{name}, dense bf16"


_CPU_SDPA_REGISTERED = False


def register_cpu_sdpa_flops() -> None:
    """Count the CPU fused attention kernels (forward and backward), which torch's FLOP table lacks
    (its CUDA kernels are in it), with torch's own SDPA formulas, so CPU counts include attention."""
    global _CPU_SDPA_REGISTERED
    if _CPU_SDPA_REGISTERED:
        return
    from torch.utils import flop_counter

    aten = torch.ops.aten
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)

    def forward_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    def backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    for op, formula in ((forward, forward_flops), (backward, backward_flops)):
        if op is not None and op.default not in flop_counter.flop_registry and op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op)(formula)
    _CPU_SDPA_REGISTERED = True


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of whatever ``fn()`` runs (forward and backward when it calls one)."""
    register_cpu_sdpa_flops()
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def training_step_flops(losses_fn: Callable[[], dict[str, torch.Tensor]], params: list[torch.nn.Parameter]) -> int:
    """FLOPs of one forward (``losses_fn()``) and its backward to ``params``.

    The backward goes through ``torch.autograd.grad``, so no ``.grad`` is written (and no DDP
    gradient hook fires): the count leaves the model's training state as it was.
    """
    def step() -> None:
        total = sum(losses_fn().values())
        torch.autograd.grad(total, params, allow_unused=True)

    return count_flops(step)


def format_throughput(flops_per_sample: float | None, samples_per_s_per_device: float,
                      peak_tflops: float | None) -> tuple[str, float | None, float | None]:
    """The log line's ``| X TFLOP/s | MFU Y%`` part, the TFLOP/s and the MFU (a fraction, or None)."""
    if flops_per_sample is None:
        return "", None, None
    tflops = flops_per_sample * samples_per_s_per_device / 1e12
    mfu = tflops / peak_tflops if peak_tflops else None
    return f" | {tflops:.3g} TFLOP/s | MFU {'n/a' if mfu is None else f'{mfu:.1%}'}", tflops, mfu
