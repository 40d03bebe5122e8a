"""Training time: `Time` (an amount in one unit) and `Timestamp` (how far a run has got).

Units: `ep` (epochs), `ba` (batches, i.e. optimizer steps), `sp` (samples), `tok` (tokens the
model read: an attention mask's ones, else every input id, as composer counts them) and `dur` (a
fraction of the run's `max_duration`). Strings parse as a number and a unit:
`"1ep"`, `"1000ba"`, `"4096sp"`, `"2e9tok"`, `"0.1dur"`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from composer_lite._keys import reject_unknown_keys

__all__ = ["Time", "TimeUnit", "Timestamp"]


class TimeUnit(StrEnum):
    EPOCH = "ep"
    BATCH = "ba"
    SAMPLE = "sp"
    TOKEN = "tok"
    DURATION = "dur"


_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-z]+)\s*$")


@dataclass(frozen=True)
class Time:
    """An amount of training time in one unit. Counts (all units but `dur`) are whole numbers."""

    value: float
    unit: TimeUnit

    def __post_init__(self) -> None:
        object.__setattr__(self, "unit", TimeUnit(self.unit))
        if self.value < 0:
            raise ValueError(f"a Time cannot be negative, got {self.value}{self.unit.value}")
        if self.unit is not TimeUnit.DURATION:
            if not isinstance(self.value, int) and float(self.value) != int(self.value):
                raise ValueError(
                    f"{self.value}{self.unit.value}: {self.unit.name.lower()}s are counted in whole numbers"
                )
            object.__setattr__(self, "value", int(self.value))

    @classmethod
    def parse(cls, text: str) -> Time:
        """`"1ep"`, `"1000ba"`, `"4096sp"`, `"2e9tok"`, `"0.1dur"`."""
        match = _PATTERN.match(str(text))
        units = ", ".join(u.value for u in TimeUnit)
        if not match:
            raise ValueError(
                f"cannot read {text!r} as a time; expected a number and a unit ({units}), e.g. '1000ba'"
            )
        number, unit = match.groups()
        if unit not in {u.value for u in TimeUnit}:
            raise ValueError(f"unknown time unit {unit!r} in {text!r}; expected one of {units}")
        if unit != TimeUnit.DURATION.value:  # counts: exact, however large ('2e9tok' included)
            try:
                exact = Decimal(number)
            except InvalidOperation:
                exact = None
            if exact is not None and exact.adjusted() > 30:
                raise ValueError(f"{text!r} is too large a time (more than 1e30)")
            if exact is not None and exact == exact.to_integral_value():
                return cls(int(exact), TimeUnit(unit))
        value = float(number)
        if not math.isfinite(value):
            raise ValueError(f"{text!r} is too large a time")
        return cls(value, TimeUnit(unit))

    @classmethod
    def coerce(cls, value: Time | str | int, default_unit: TimeUnit = TimeUnit.BATCH) -> Time:
        """A Time from a Time, a string, or a bare integer in `default_unit`."""
        if isinstance(value, Time):
            return value
        if isinstance(value, bool):
            raise TypeError(f"expected a time like '1ep' or '1000ba', got {value!r}")
        if isinstance(value, int):
            return cls(value, default_unit)
        if isinstance(value, str):
            return cls.parse(value)
        raise TypeError(
            f"expected a time like '1ep' or '1000ba', got {type(value).__name__} {value!r}"
        )

    def _same_unit(self, other: object, op: str) -> Time:
        if not isinstance(other, Time):
            other = Time.coerce(other) if isinstance(other, str) else other
        if not isinstance(other, Time):
            raise TypeError(f"cannot {op} Time and {type(other).__name__}")
        if other.unit is not self.unit:
            raise TypeError(f"cannot {op} {self} and {other}: different units")
        return other

    def __add__(self, other: Time | str) -> Time:
        return Time(self.value + self._same_unit(other, "add").value, self.unit)

    def __sub__(self, other: Time | str) -> Time:
        return Time(self.value - self._same_unit(other, "subtract").value, self.unit)

    def __mul__(self, factor: float) -> Time:
        value = self.value * factor
        return Time(value if self.unit is TimeUnit.DURATION else round(value), self.unit)

    __rmul__ = __mul__

    def __truediv__(self, other: Time | float) -> float | Time:
        if isinstance(other, Time):
            return self.value / self._same_unit(other, "divide").value
        return self * (1 / other)

    def __lt__(self, other: Time | str) -> bool:
        return self.value < self._same_unit(other, "compare").value

    def __le__(self, other: Time | str) -> bool:
        return self.value <= self._same_unit(other, "compare").value

    def __gt__(self, other: Time | str) -> bool:
        return self.value > self._same_unit(other, "compare").value

    def __ge__(self, other: Time | str) -> bool:
        return self.value >= self._same_unit(other, "compare").value

    def __str__(self) -> str:
        return (
            f"{self.value:g}{self.unit.value}"
            if self.unit is TimeUnit.DURATION
            else f"{self.value}{self.unit.value}"
        )


@dataclass
class Timestamp:
    """How far a run has got: totals, and positions within the current epoch. Checkpointed."""

    epoch: int = 0
    batch: int = 0
    sample: int = 0
    token: int = 0
    batch_in_epoch: int = 0
    sample_in_epoch: int = 0
    token_in_epoch: int = 0

    # batches per epoch when the train loader has a length (set by the Trainer, not a field and
    # not checkpointed): with max_duration in epochs, `fraction_of` then moves within an epoch
    epoch_length = None

    def get(self, unit: TimeUnit) -> int:
        """The total count in `unit` (not `dur`, which needs the run's `max_duration`)."""
        unit = TimeUnit(unit)
        if unit is TimeUnit.DURATION:
            raise ValueError(
                "a Timestamp has no duration of its own; use Timestamp.fraction_of(max_duration)"
            )
        return {
            TimeUnit.EPOCH: self.epoch,
            TimeUnit.BATCH: self.batch,
            TimeUnit.SAMPLE: self.sample,
            TimeUnit.TOKEN: self.token,
        }[unit]

    def fraction_of(self, max_duration: Time) -> float:
        """The fraction of `max_duration` done (may pass 1.0 by less than a batch)."""
        if max_duration.unit is TimeUnit.DURATION:
            raise ValueError("max_duration cannot be given in 'dur'")
        done: float = self.get(max_duration.unit)
        if max_duration.unit is TimeUnit.EPOCH and self.epoch_length:
            done += min(self.batch_in_epoch / self.epoch_length, 1.0)
        return done / max(max_duration.value, 1e-12)

    def reached(self, time: Time, max_duration: Time) -> bool:
        """Whether this timestamp is at or past `time` (a `dur` time counts against `max_duration`)."""
        if time.unit is TimeUnit.DURATION:
            return self.fraction_of(max_duration) >= time.value - 1e-12
        return self.get(time.unit) >= time.value

    def to_steps(
        self,
        time: Time,
        max_duration: Time,
        steps_per_epoch: int | None,
        samples_per_batch: int | None,
        tokens_per_batch: int | None = None,
    ) -> int:
        """An approximate number of optimizer steps for `time` (for schedulers' warmup and length)."""
        if time.unit is TimeUnit.DURATION:
            return round(
                time.value
                * self.to_steps(
                    max_duration, max_duration, steps_per_epoch, samples_per_batch, tokens_per_batch
                )
            )
        if time.unit is TimeUnit.BATCH:
            return int(time.value)
        if time.unit is TimeUnit.EPOCH:
            if steps_per_epoch is None:
                raise ValueError(f"{time} needs a dataloader with a length to count its steps")
            return int(time.value) * steps_per_epoch
        if time.unit is TimeUnit.SAMPLE:
            if not samples_per_batch:
                raise ValueError(
                    f"{time} needs the samples per batch to count its steps: give the dataloader"
                    " a batch_size, or use 'ba', 'ep' or 'dur'"
                )
            return -(-int(time.value) // samples_per_batch)
        if not tokens_per_batch:
            raise ValueError(
                f"{time} needs the tokens per batch to count its steps: set the Schedule's"
                " tokens_per_batch (global batch x sequence length), or use 'ba', 'ep' or 'dur'"
            )
        return -(-int(time.value) // tokens_per_batch)

    def advance_batch(self, samples: int, tokens: int) -> None:
        self.batch += 1
        self.batch_in_epoch += 1
        self.sample += samples
        self.sample_in_epoch += samples
        self.token += tokens
        self.token_in_epoch += tokens

    def advance_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = self.sample_in_epoch = self.token_in_epoch = 0

    def state_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        reject_unknown_keys(type(self), state, "Timestamp")
        for name in (f.name for f in fields(self)):
            setattr(self, name, int(state.get(name, 0)))
