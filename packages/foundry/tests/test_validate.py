"""The config validator: every problem of a config in one error, named by dotted key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from foundry.schema import AdamWConfig, LionConfig, OptimizerConfig
from foundry.validate import ConfigError, build, problems_of


@dataclass(frozen=True, kw_only=True)
class Inner:
    size: int = 1
    rate: float = 0.5
    kind: Literal["a", "b"] = "a"

    def __post_init__(self) -> None:
        if self.size > 100:
            raise ValueError(f"size must be <= 100, got {self.size}")


@dataclass(frozen=True, kw_only=True)
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    items: list[int] = field(default_factory=list)
    table: dict[str, Inner] = field(default_factory=dict)
    maybe: float | None = None
    optimizer: OptimizerConfig = field(default_factory=AdamWConfig)


def test_every_problem_of_the_tree_comes_in_one_error():
    data = {
        "name": 3,
        "inner": {"sise": 2, "rate": "fast", "kind": "c"},
        "items": [1, "two", 3.5],
        "table": {"x": {"size": True}, "y": {"rat": 1}},
        "mabye": 1.0,
        "optimizer": {"name": "adamw", "lr": "high", "beta": [0.9, 0.95]},
    }
    with pytest.raises(ConfigError) as caught:
        build(Outer, data)
    problems = caught.value.problems
    expected = [
        "name: expected str, got int 3",
        "inner.sise: unknown key; did you mean 'size'?",
        "inner.rate: expected float, got str 'fast'",
        "inner.kind: expected one of 'a', 'b', got str 'c'",
        "items[1]: expected int, got str 'two'",
        "items[2]: expected int, got float 3.5",
        "table.x.size: expected int, got bool True",
        "table.y.rat: unknown key; did you mean 'rate'?",
        "mabye: unknown key; did you mean 'maybe'?",
        "optimizer.lr: expected float, got str 'high'",
        "optimizer.beta: unknown key; did you mean 'betas'?",
    ]
    assert sorted(problems) == sorted(expected)
    assert str(caught.value).startswith(f"{len(expected)} problems in the config:")


def test_valid_data_builds_typed_frozen_instances():
    cfg = build(Outer, {"name": "n", "inner": {"size": 3, "rate": 2}, "items": [1, 2]})
    assert cfg.inner == Inner(size=3, rate=2.0)
    assert isinstance(cfg.inner.rate, float)
    assert cfg.items == [1, 2] and cfg.optimizer == AdamWConfig()
    with pytest.raises(AttributeError):
        cfg.name = "other"  # type: ignore[misc]


def test_required_keys_missing_or_left_as_question_marks():
    assert problems_of(Outer, {}) == ["name: required, but not set (give it: name=...)"]
    assert problems_of(Outer, {"name": "???"}) == [
        "name: required, but not set (give it on the command line: name=...)"
    ]


def test_value_checks_of_a_dataclass_are_reported_with_its_key():
    assert problems_of(Outer, {"name": "n", "table": {"k": {"size": 500}}}) == [
        "table.k: size must be <= 100, got 500"
    ]


def test_a_union_of_dataclasses_is_chosen_by_name():
    cfg = build(Outer, {"name": "n", "optimizer": {"name": "lion", "lr": 1e-4}})
    assert cfg.optimizer == LionConfig(lr=1e-4)
    assert cfg.optimizer.betas == (0.9, 0.99)
    assert problems_of(Outer, {"name": "n", "optimizer": {"name": "lino"}}) == [
        "optimizer.name: expected one of 'adamw', 'decoupled_adamw', 'lion', got str 'lino'; "
        "did you mean 'lion'?"
    ]
    # Lion has no eps: the key is unknown for it, though AdamW has one
    assert problems_of(Outer, {"name": "n", "optimizer": {"name": "lion", "eps": 1e-8}}) == [
        "optimizer.eps: unknown key (known: betas, lr, name, weight_decay)"
    ]


def test_optional_and_null():
    assert build(Outer, {"name": "n", "maybe": None}).maybe is None
    assert build(Outer, {"name": "n", "maybe": 2}).maybe == 2.0
    assert problems_of(Outer, {"name": "n", "maybe": "x"}) == [
        "maybe: expected float or null, got str 'x'"
    ]
