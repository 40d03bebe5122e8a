"""The few collectives the Trainer needs, working the same with one process or many.

`init_distributed` starts the process group from torchrun's environment (gloo on CPU, NCCL on
GPU) with a timeout, so a hung collective ends the job instead of waiting forever.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist

__all__ = [
    "all_reduce",
    "all_gather_object",
    "all_reduce_tensor",
    "barrier",
    "broadcast_object",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "shutdown_distributed",
]

log = logging.getLogger(__name__)


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def init_distributed(device: torch.device, timeout_s: float) -> tuple[int, int]:
    """Join the process group torchrun describes (if WORLD_SIZE > 1); returns (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if (
        int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0
        and os.environ.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") != "1"
    ):
        log.warning(
            "torchrun --max-restarts is on but TORCH_DISABLE_SHARE_RDZV_TCP_STORE is not 1: restarted "
            "workers may read the dead attempt's addresses from the shared rendezvous store and fail "
            "to connect (pytorch/pytorch#135712); set it in the launch environment"
        )
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return get_rank(), get_world_size()


def shutdown_distributed() -> None:
    """Leave the process group at the end of a command: every rank meets at a barrier, so none
    exits while another still works with it, then the group is destroyed. A rank that exits with
    its gloo group alive can abort at interpreter exit ("terminate called without an active
    exception", SIGABRT) and fail the whole torchrun job after the work is done. A no-op without a
    process group; call it on the success path only (after an error the peers may never arrive)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()


def all_reduce(
    values: Sequence[float], op: str = "sum", device: torch.device | None = None
) -> list[float]:
    """Sum (or max) a few numbers over all ranks in one collective; float64 on the way."""
    if get_world_size() == 1:
        return [float(v) for v in values]
    backend_device = (
        device if device is not None and dist.get_backend() == "nccl" else torch.device("cpu")
    )
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=backend_device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor.tolist()


def all_reduce_tensor(
    values: Sequence[float | torch.Tensor], device: torch.device, op: str = "sum"
) -> torch.Tensor:
    """Like `all_reduce`, but returns the summed (or max) values as a float64 tensor without
    waiting for them: on the device with NCCL, on the CPU otherwise. Scalars may be tensors."""
    on = (
        device
        if get_world_size() > 1 and dist.get_backend() == "nccl"
        else (device if get_world_size() == 1 else torch.device("cpu"))
    )
    tensor = torch.stack([torch.as_tensor(v, dtype=torch.float64).to(on) for v in values])
    if get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: object) -> list[object]:
    """Every rank's `obj`, in rank order ([obj] without a process group)."""
    if get_world_size() == 1:
        return [obj]
    out: list[object] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, src: int = 0) -> object:
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
