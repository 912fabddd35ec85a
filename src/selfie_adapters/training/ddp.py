"""Data-parallel training across processes (torchrun): each rank takes a slice of the global batch,
only the adapter's gradients are all-reduced (the LM is frozen, the adapter tiny).

Launch: ``torchrun --nproc_per_node 8 "$(which selfie)" train config.yaml`` (NCCL on GPUs,
gloo on CPU). ``data.batch_size`` stays the *global* batch, so results match one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None  # this rank's device under DDP; None → the model's own placement

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch of example indices (strided)."""
        return idx[self.rank::self.world_size]


def setup_distributed() -> DistInfo:
    """Join the process group that torchrun (or the caller) set up; one process → DistInfo()."""
    if not dist.is_available():
        return DistInfo()
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return DistInfo()
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = None
    if torch.cuda.is_available() and dist.get_backend() == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count())))
        torch.cuda.set_device(device)
    return DistInfo(rank, world, device)


def all_reduce_sum(tensors: list[torch.Tensor], info: DistInfo) -> None:
    """In-place sum across ranks (a no-op for one process); one flat buffer, one collective."""
    if info.world_size <= 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def all_reduce_grads(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Sum the adapter gradients over ranks (each rank already divided by the global batch size)."""
    if info.world_size <= 1:
        return
    for p in params:
        if p.grad is None:  # a rank whose share of the batch was empty
            p.grad = torch.zeros_like(p)
    all_reduce_sum([p.grad for p in params], info)


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()
