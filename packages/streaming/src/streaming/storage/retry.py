"""Retries with exponential backoff and full jitter, for transient object-store failures.

A store raises `TransientStorageError` for failures worth another try (connection refused or
reset, timeouts, HTTP 5xx, throttling) and the permanent `StorageError` kinds of
`streaming.errors` for the rest (missing object or bucket, rejected credentials), which are never
retried. `call_with_retries` turns the last transient failure into a `StorageError` that names
the URL and the number of attempts.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from streaming.errors import StorageError

__all__ = ["DEFAULT_RETRIES", "Backoff", "TransientStorageError", "call_with_retries"]

logger = logging.getLogger("streaming.storage")

T = TypeVar("T")

# Five retries after the first try: with the default Backoff they wait at most
# 0.5 + 1 + 2 + 4 + 8 = 15.5 s in all (about half of that on average).
DEFAULT_RETRIES = 5


class TransientStorageError(StorageError):
    """A failure that may go away if the same request is sent again (network, 5xx, throttling)."""


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Exponential backoff with full jitter: retry `n` (from 0) waits U(0, min(cap, base * 2**n)).

    `sleep` and `random` are injectable so tests can record the delays instead of waiting.
    """

    base: float = 0.5  # seconds; the first retry waits up to this long
    cap: float = 20.0  # seconds; no single wait is longer
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    random: Callable[[], float] = field(default=random.random, repr=False)

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError(
                f"Backoff base and cap must be >= 0 seconds; got {self.base}, {self.cap}"
            )

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (0 for the first retry)."""
        return self.random() * min(self.cap, self.base * 2.0**retry)


DEFAULT_BACKOFF = Backoff()


def call_with_retries(
    fn: Callable[[], T], *, url: str, action: str, retries: int, backoff: Backoff | None = None
) -> T:
    """Call `fn()`; on `TransientStorageError` wait and call again, at most `retries` more times.

    Permanent errors propagate at once. After the last transient failure, raises `StorageError`
    saying that `action` of `url` failed after so many attempts, chained to the last failure.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0; got {retries}")
    backoff = DEFAULT_BACKOFF if backoff is None else backoff
    for retry in range(retries + 1):
        try:
            return fn()
        except TransientStorageError as err:
            if retry == retries:
                raise StorageError(
                    f"could not {action} {url}: gave up after {retries + 1} attempts; "
                    f"last error: {err}"
                ) from err
            wait = backoff.delay(retry)
            logger.warning(
                "%s %s failed (%s); retry %d of %d in %.2f s",
                action,
                url,
                err,
                retry + 1,
                retries,
                wait,
            )
            backoff.sleep(wait)
    raise AssertionError("unreachable: the loop returns or raises")
