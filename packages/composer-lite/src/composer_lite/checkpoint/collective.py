"""The collectives a checkpoint save or load needs, the same with one process or many.

`on_all_ranks(action, fn)` is the rule every step of a save or load follows: run `fn` on every
rank, gather what each returned or raised, and if any rank failed, raise on every rank, so no
rank is left waiting in a later collective for one that gave up.
"""

from __future__ import annotations

import contextlib
import pickle
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch.distributed as dist

from composer_lite.checkpoint.format import CheckpointError
from composer_lite.dist import get_world_size

__all__ = ["broadcast_from_zero", "on_all_ranks", "on_all_ranks_local", "single_process_quiet"]

T = TypeVar("T")


def broadcast_from_zero(value: T) -> T:
    """Rank 0's `value` on every rank."""
    if get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_all_ranks(action: str, fn: Callable[[], T]) -> list[T]:
    """Run `fn` on every rank; return every rank's result, or raise on every rank if any failed
    (a rank raises its own error, the others the first failing rank's, noting which rank)."""
    try:
        result, error = fn(), None
    except Exception as err:
        result, error = None, err
    world = get_world_size()
    if world == 1:
        if error is not None:
            raise error
        return [result]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (result, _picklable(error)))
    if error is not None:
        raise error
    for other, (_, other_error) in enumerate(gathered):
        if other_error is not None:
            other_error.add_note(f"(raised on rank {other} while {action})")
            raise other_error
    return [value for value, _ in gathered]


def on_all_ranks_local(action: str, fn: Callable[[], T]) -> T:
    """`on_all_ranks` for a result that stays on its rank (only errors are exchanged)."""
    box: list[T] = []
    on_all_ranks(action, lambda: box.append(fn()))
    return box[0]


@contextlib.contextmanager
def single_process_quiet() -> Iterator[None]:
    """Silence DCP's warning that it runs without a process group (expected with one process)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _picklable(error: Exception | None) -> Exception | None:
    """The error itself if it survives pickling (to reach the other ranks), else its message."""
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return CheckpointError(f"{type(error).__name__}: {error}")
