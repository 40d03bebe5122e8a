"""mosaicml-streaming's `streaming.base.util` helpers, over ours.

- `bytes_to_int` ("64mb" -> 67108864, units of 1024: `streaming.sizes.parse_bytes`) and
  `number_abbrev_to_int` ("1.5k" -> 1500: `streaming.options.parse_epoch_size`).
- `clean_stale_shared_memory()`: does nothing, and needs nothing: streaming keeps no shared
  memory under fixed names, so a crashed run leaves none behind (kept so that scripts that call
  it run unchanged).
- `get_list_arg`, `wait_for_file_to_exist`, `retry`, `merge_index` (`streaming.merge`).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

from streaming.merge import merge_index
from streaming.options import parse_epoch_size
from streaming.sizes import parse_bytes

__all__ = [
    "bytes_to_int",
    "clean_stale_shared_memory",
    "get_list_arg",
    "merge_index",
    "number_abbrev_to_int",
    "retry",
    "wait_for_file_to_exist",
]


def bytes_to_int(bytes_str: int | float | str) -> int:
    """A byte size as mosaicml-streaming reads it ("64mb", "1.5kb", 4096)."""
    return parse_bytes(bytes_str, setting="bytes_to_int")


def number_abbrev_to_int(abbrev_str: int | float | str) -> int:
    """A count as mosaicml-streaming reads it ("1.5k", "2m", "1b", "3t", 1000)."""
    if isinstance(abbrev_str, float):
        return int(abbrev_str)
    value = parse_epoch_size(abbrev_str)
    assert value is not None
    return value


def clean_stale_shared_memory() -> None:
    """Nothing to clean: streaming names no shared memory (see the module docstring)."""


def get_list_arg(text: str) -> list[str]:
    """A comma-separated command-line value as a list ("" -> [])."""
    return text.split(",") if text else []


def wait_for_file_to_exist(
    filename: str, poll_interval: float, timeout: float, err_msg: str
) -> None:
    """Wait until `filename` exists; RuntimeError (starting with `err_msg`) after `timeout` s."""
    start = time.monotonic()
    while not os.path.exists(filename):
        elapsed = time.monotonic() - start
        if elapsed > timeout:
            raise RuntimeError(f"{err_msg}{timeout:.3f} < {elapsed:.3f} secs.")
        time.sleep(poll_interval)


def retry(
    exc_class: type[BaseException] | tuple[type[BaseException], ...] | Callable | None = None,
    clean_up_fn: Callable[[], Any] | None = None,
    num_attempts: int = 3,
    initial_backoff: float = 1.0,
    max_jitter: float = 0.5,
) -> Any:
    """A decorator that calls the function up to `num_attempts` times while it raises
    `exc_class` (default: any Exception), sleeping `initial_backoff * 2**attempt` plus jitter
    between attempts and calling `clean_up_fn` first; usable bare (`@retry`) or with arguments."""
    import random

    if callable(exc_class) and not isinstance(exc_class, type):  # @retry without arguments
        return retry()(exc_class)
    catch = exc_class or Exception
    if num_attempts < 1:
        raise ValueError(f"retry needs num_attempts >= 1, got {num_attempts}")

    def wrap(func: Callable) -> Callable:
        @functools.wraps(func)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            for attempt in range(num_attempts):
                try:
                    return func(*args, **kwargs)
                except catch:
                    if attempt == num_attempts - 1:
                        raise
                    if clean_up_fn is not None:
                        clean_up_fn()
                    time.sleep(initial_backoff * 2**attempt + random.random() * max_jitter)
            raise AssertionError("unreachable")

        return wrapped

    return wrap
