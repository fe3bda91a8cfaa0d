"""Data parallelism on ``torch.distributed``: one context object, the same code for 1 or N processes.

``init_distributed()`` reads the variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins the process group; without them it
returns a single-process context (world size 1) whose collectives are no-ops, so a script runs
unchanged as ``python script.py`` or ``torchrun --nproc_per_node=N script.py``.

The collectives used by the trainers are coalesced (one call per step for all gradients) and
always reduce in rank order, so the result is the same on every rank.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence

import torch

from .errors import InputError

BACKENDS = ("auto", "gloo", "nccl")


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``, the ``backend`` (None: single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")
    comm_seconds: float = 0.0  # wall time spent in collectives (all-reduce, all-gather) by this process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def local_batch(self, global_batch: int) -> int:
        """Rows per rank of a global batch; refuses a world size that does not divide it."""
        check_divides(global_batch, self.world_size)
        return global_batch // self.world_size

    # ------------------------------------------------------------------ collectives (no-ops on one process)
    def all_reduce_mean_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Average ``tensors`` over ranks, in place, with one coalesced all-reduce."""
        if not self.distributed or not tensors:
            return
        import torch.distributed as dist
        t0 = time.perf_counter()
        flat = torch.cat([t.reshape(-1).float() for t in tensors]).to(self._comm_device())
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        self.comm_seconds += time.perf_counter() - t0
        i = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[i:i + n].view_as(t).to(t.device, t.dtype))
            i += n

    def all_reduce_max_(self, t: torch.Tensor) -> None:
        """Element-wise maximum over ranks, in place (e.g. the union of boolean masks as 0/1)."""
        if not self.distributed:
            return
        import torch.distributed as dist
        buf = t.to(self._comm_device(), torch.float32)
        dist.all_reduce(buf, op=dist.ReduceOp.MAX)
        t.copy_(buf.to(t.device, t.dtype))

    def all_gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate (along dim 0, in rank order) each rank's ``t`` (same shape on every rank)."""
        if not self.distributed:
            return t
        import torch.distributed as dist
        src = t.contiguous().to(self._comm_device())
        parts = [torch.empty_like(src) for _ in range(self.world_size)]
        dist.all_gather(parts, src)
        return torch.cat(parts).to(t.device)

    def all_reduce_sum_int(self, n: int) -> int:
        """Sum of an integer over ranks (e.g. rows harvested)."""
        if not self.distributed:
            return n
        import torch.distributed as dist
        buf = torch.tensor([n], dtype=torch.int64, device=self._comm_device())  # exact counts (gloo and nccl)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return int(buf.item())

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist
            dist.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")


def check_divides(global_batch: int, world_size: int) -> None:
    if world_size <= 0:
        raise InputError(f"world_size must be positive, got {world_size}.")
    if global_batch % world_size:
        lower = global_batch - global_batch % world_size
        raise InputError(f"The global batch ({global_batch} rows) is not divisible by the world size ({world_size}); "
                         f"use a multiple of {world_size} (e.g. {lower or world_size} or {lower + world_size}), "
                         "or another number of processes.")


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        raise InputError(f"Environment variable {name}={v!r} is not an integer.") from None


def init_distributed(backend: str = "auto", device: str | None = None, timeout_s: float = 600.0) -> DistContext:
    """Join the process group described by the torchrun environment, or return a 1-process context.

    backend: "gloo" (CPU, any machine), "nccl" (CUDA GPUs, one per process) or "auto" (nccl when
    CUDA is available, else gloo). device: "cpu", "cuda" or None (cuda:LOCAL_RANK with nccl,
    else cpu). Raises ``InputError`` for an unknown backend, nccl or cuda without CUDA, or a
    partial environment (RANK without WORLD_SIZE, MASTER_ADDR or MASTER_PORT).
    """
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    cuda = torch.cuda.is_available()
    if backend == "nccl" and not cuda:
        raise InputError("backend='nccl' needs CUDA GPUs, but CUDA is not available on this machine; "
                         "use --backend gloo (CPU) or run on GPU machines.")
    if device is not None and str(device).startswith("cuda") and not cuda:
        raise InputError(f"device={device!r} was requested but CUDA is not available on this machine; use device='cpu'.")
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if rank is None and world is None:
        dev = torch.device(device or ("cuda" if backend == "nccl" else "cpu"))
        return DistContext(0, 1, 0, None, dev)
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if os.environ.get(k) is None]
    if missing:
        raise InputError(f"Partial torch.distributed environment: {missing} not set. Launch with torchrun "
                         "(it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), or set all of them.")
    if not 0 <= rank < world:
        raise InputError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world}).")
    local = rank if local is None else local
    if device is None:
        dev = torch.device("cuda", local) if backend == "nccl" else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local)
    if dev.type == "cuda":
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {local} has no GPU: this machine has {torch.cuda.device_count()}; "
                             "start at most that many processes per node (--nproc_per_node).")
        torch.cuda.set_device(dev)
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    return DistContext(rank, world, local, backend, dev)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (no-op on a single process)."""
    if ctx.backend is not None:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
