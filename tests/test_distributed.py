"""all_gather_with_grad across two real CPU processes (gloo on loopback)."""
from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lfvila.distributed import all_gather_with_grad
from lfvila.losses import GlobalContrastiveLoss

ROWS = (2, 3)  # uneven batches on purpose


def local_rows(rank: int) -> torch.Tensor:
    """Rank r's (ROWS[r], 4) input, reproducible in every process."""
    return torch.arange(ROWS[rank] * 4, dtype=torch.float64).reshape(ROWS[rank], 4) + 100 * rank


def rank_weights(rank: int) -> torch.Tensor:
    """Each rank weights the gathered rows differently, so its loss differs from the other's."""
    return torch.linspace(-1, 1, sum(ROWS) * 4, dtype=torch.float64).reshape(sum(ROWS), 4) * (rank + 1)


def features(rank: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(ROWS[rank], 8, generator=torch.Generator().manual_seed(rank)), dim=-1)


def _worker(rank: int, world: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        start = sum(ROWS[:rank])
        # Values: rows in rank order.
        x = local_rows(rank).requires_grad_()
        gathered = all_gather_with_grad(x)
        assert torch.equal(gathered.detach(), torch.cat([local_rows(r) for r in range(world)]))
        # Gradients: the local slice gets the sum over ranks of each rank's loss gradient.
        (gathered * rank_weights(rank)).sum().backward()
        expected = sum(rank_weights(r) for r in range(world))[start:start + ROWS[rank]]
        assert torch.allclose(x.grad, expected)

        # A contrastive loss over gathered features equals the single-process loss on the whole batch,
        # and the local gradient (after DDP's averaging over ranks) equals the single-process gradient.
        video = features(rank).requires_grad_()
        paragraph = features(rank).flip(1).contiguous().requires_grad_()
        loss = GlobalContrastiveLoss(0.05)(video, paragraph)
        loss.backward()
        all_video = torch.cat([features(r) for r in range(world)]).requires_grad_()
        all_paragraph = torch.cat([features(r).flip(1) for r in range(world)]).requires_grad_()
        reference = GlobalContrastiveLoss(0.05, gather=False)(all_video, all_paragraph)
        reference.backward()
        assert torch.allclose(loss, reference)
        assert torch.allclose(video.grad / world, all_video.grad[start:start + ROWS[rank]], atol=1e-6)
        assert torch.allclose(paragraph.grad / world, all_paragraph.grad[start:start + ROWS[rank]], atol=1e-6)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_all_gather_with_grad_two_gloo_processes():
    mp.spawn(_worker, args=(2, free_port()), nprocs=2, join=True)


def test_all_gather_with_grad_is_identity_without_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(x) is x
