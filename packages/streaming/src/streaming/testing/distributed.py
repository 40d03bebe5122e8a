"""Run a function on N CPU processes joined by a gloo process group: the one helper that every
package's distributed tests use (an explicit world size, 127.0.0.1, a free port).

    def body(rank, world_size, shared_arg):
        ...                       # torch.distributed is initialized here
        return something_picklable

    results = run_distributed(body, world_size=2, args=("shared_arg",))   # [result of rank 0, 1]

Processes are forked, so `body` may be defined in a test module (nothing needs to import it by
name); each rank runs torch with one thread (forked OpenMP pools hang otherwise). On a GPU machine
the parent must not have initialized CUDA before forking (run such tests with
`CUDA_VISIBLE_DEVICES=` or under torchrun). Each rank gets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR` and
`MASTER_PORT` in its environment, as torchrun sets them. A rank that raises makes the whole call
raise with that rank's traceback; a hung rank is killed after `timeout` seconds.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue as queue_module
import socket
import traceback
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["DistributedTestError", "free_port", "run_distributed"]


class DistributedTestError(RuntimeError):
    """A rank of `run_distributed` failed or timed out."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(fn, rank, world_size, local_world_size, port, args, queue) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank % local_world_size),
        LOCAL_WORLD_SIZE=str(local_world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    import torch
    import torch.distributed as dist

    # A forked child inherits a parent's OpenMP thread pool in a broken state: once the parent has
    # run a parallel torch op, the child would hang in its first one. One thread per rank avoids it.
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        try:
            # Pickled here, by value: a queue would share tensors through file descriptors that
            # die with this process before the parent reads them.
            queue.put((rank, "ok", pickle.dumps(fn(rank, world_size, *args))))
        finally:
            if dist.is_initialized():  # `fn` may have left the group itself
                dist.destroy_process_group()
    except BaseException:
        queue.put((rank, "error", traceback.format_exc()))


def run_distributed(
    fn: Callable[..., Any],
    *,
    world_size: int,
    args: Sequence[Any] = (),
    local_world_size: int | None = None,
    timeout: float = 120.0,
) -> list[Any]:
    """Run `fn(rank, world_size, *args)` on `world_size` gloo ranks; return their results by rank."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    port = free_port()
    per_node = local_world_size or world_size
    procs = [
        ctx.Process(target=_entry, args=(fn, r, world_size, per_node, port, tuple(args), queue))
        for r in range(world_size)
    ]
    for proc in procs:
        proc.start()
    results: dict[int, Any] = {}
    errors: dict[int, str] = {}
    try:
        while len(results) + len(errors) < world_size:
            # Once a rank failed, the others may wait forever on a collective: give them a
            # moment to report their own errors, then stop them all.
            try:
                rank, status, value = queue.get(timeout=3 if errors else timeout)
            except queue_module.Empty:
                if errors:
                    break
                silent = sorted(set(range(world_size)) - set(results))
                exits = {r: procs[r].exitcode for r in silent}
                raise DistributedTestError(
                    f"ranks {silent} gave no result within {timeout:.0f} s (exit codes, None if "
                    f"still running: {exits})"
                ) from None
            if status == "ok":
                results[rank] = pickle.loads(value)
            else:
                errors[rank] = value
    finally:
        for proc in procs:
            proc.join(timeout=1 if errors else 10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    if errors:
        raise DistributedTestError(
            "\n".join(f"rank {r} failed:\n{errors[r]}" for r in sorted(errors))
        )
    return [results[r] for r in range(world_size)]
