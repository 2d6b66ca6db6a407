"""DistributedDataParallel plumbing for ``torchrun --nproc-per-node N -m bnmodel train``.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them the run is a single process and
nothing here touches torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["DistContext", "all_reduce_sum", "cleanup", "init_distributed", "shard", "sync_buffers"]


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes checkpoints, logs and plots."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available; use --device cpu")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")


def init_distributed(device: str) -> DistContext:
    """Join the process group when launched by torchrun (NCCL on CUDA, gloo on the CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistContext(0, 1, dev)
    import torch.distributed as dist

    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), dev)


def cleanup(ctx: DistContext, *, wait_for_peers: bool = True) -> None:
    """Leave the process group; ``wait_for_peers=False`` after an error (a barrier could hang)."""
    if ctx.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            # Rank 0 still writes checkpoints after the last collective; a rank that tore down
            # its gloo connections meanwhile could abort ("terminate called without an active
            # exception"), so every rank waits for the others before leaving the group.
            if wait_for_peers:
                dist.barrier()
            dist.destroy_process_group()


def shard(permutation: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's rows of a permutation shared by all ranks (same seed everywhere).

    The tail that does not divide evenly is dropped, so every rank runs the same number of
    steps (DDP's all-reduce would hang otherwise); rank r takes rows r, r + W, r + 2W, ...
    """
    if not ctx.enabled:
        return permutation
    usable = permutation.shape[0] // ctx.world_size * ctx.world_size
    return permutation[ctx.rank : usable : ctx.world_size]


@torch.no_grad()
def sync_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's BN running stats to every rank before evaluation and checkpointing.

    DDP broadcasts buffers at the start of each forward, so after the last step of an epoch each
    rank holds stats updated by its own last batch; without this, ranks would score different
    models and could disagree about early stopping.
    """
    if not ctx.enabled:
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over ranks, in place (one collective per epoch for the training metrics)."""
    if ctx.enabled:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
