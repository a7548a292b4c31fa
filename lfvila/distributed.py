"""Cross-rank helpers used by the contrastive losses."""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's ``x`` along dim 0; the backward sums the gradient over ranks.

    Every rank computes its loss from the gathered tensor, so the gradient of the local slice is the sum
    of all ranks' gradients for it (a reduce-scatter). DDP then averages parameter gradients over ranks,
    which makes the result the gradient of the mean of the ranks' losses. Ranks may hold different
    batch sizes: rows are padded to the largest for the collective and trimmed after.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        sizes_local = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
        sizes = [torch.zeros_like(sizes_local) for _ in range(world)]
        dist.all_gather(sizes, sizes_local)
        sizes_list = [int(s.item()) for s in sizes]
        largest = max(sizes_list)
        padded = x.new_zeros((largest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        rank = dist.get_rank()
        ctx.start = sum(sizes_list[:rank])
        ctx.size = x.shape[0]
        return torch.cat([part[:n] for part, n in zip(parts, sizes_list)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.start + ctx.size]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``(N_r, ...)`` on each rank -> ``(sum_r N_r, ...)`` in rank order, differentiable.

    The identity when not running distributed (or with one rank).
    """
    if not is_distributed():
        return x
    return _AllGatherWithGrad.apply(x)
