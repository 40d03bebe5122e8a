"""What an evaluation returns: per-task metrics, per-example verdicts, and what went wrong.

`EvalResults.metrics()` is the flat `{name: float}` view (`"piqa/0-shot/acc_norm_tokens"`,
`"mmlu/5-shot/abstract_algebra/acc_norm_tokens"`) that loggers and the in-training evaluation
take. `save`/`load` write and read the JSON form (format `evalkit-results`, version 1; other
versions are refused), which `compare` and the gauntlet read back.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from statistics import fmean

from evalkit.tasks import Issue

__all__ = ["FORMAT", "VERSION", "EvalResults", "ExampleResult", "NearTie", "TaskResult"]

FORMAT, VERSION = "evalkit-results", 1


@dataclass(frozen=True)
class NearTie:
    """A verdict within `tol` of flipping: `gap` is the compared difference (see task_types)."""

    task: str
    location: str
    metric: str
    gap: float

    def __str__(self) -> str:
        return f"{self.location}: {self.task}: {self.metric} near tie (difference {self.gap:+.2e})"


@dataclass
class ExampleResult:
    """One evaluated example: its jsonl line, verdict per metric, and the raw numbers."""

    line: int
    correct: dict[str, bool]
    logprobs: list[float] = field(default_factory=list)  # per request (choice, context option)
    n_tokens: list[int] = field(default_factory=list)
    category: str | None = None
    text: str | None = None  # generation tasks: what the model generated


@dataclass
class TaskResult:
    """One task at one few-shot count.

    `score` is the primary metric; for a task with categories, the mean over categories of it
    (each category counts once, as llm-foundry's gauntlet averages sub-tasks).
    """

    name: str
    label: str
    num_fewshot: int
    task_type: str
    dataset: str
    primary: str
    metrics: dict[str, float]
    n_examples: int
    categories: dict[str, dict[str, float]] = field(default_factory=dict)
    near_ties: list[NearTie] = field(default_factory=list)
    bad_examples: list[Issue] = field(default_factory=list)
    examples: list[ExampleResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def score(self) -> float:
        if self.categories:
            return fmean(c[self.primary] for c in self.categories.values())
        return self.metrics[self.primary]


@dataclass
class EvalResults:
    """Every task's result, the tasks that could not run, and the wall time."""

    model: str
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    missing_tasks: list[Issue] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bad_examples(self) -> list[Issue]:
        return [issue for t in self.tasks.values() for issue in t.bad_examples]

    @property
    def near_ties(self) -> list[NearTie]:
        return [tie for t in self.tasks.values() for tie in t.near_ties]

    @property
    def n_examples(self) -> int:
        return sum(t.n_examples for t in self.tasks.values())

    def metrics(self) -> dict[str, float]:
        """Flat {name: value}: every metric of every task and category, and each task's score."""
        flat: dict[str, float] = {}
        for name, task in self.tasks.items():
            for metric, value in task.metrics.items():
                flat[f"{name}/{metric}"] = value
            for category, values in task.categories.items():
                for metric, value in values.items():
                    flat[f"{name}/{category}/{metric}"] = value
            flat[f"{name}/score"] = task.score
        return flat

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        return {"format": FORMAT, "version": VERSION, **out}

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> EvalResults:
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError(
                f"{source}: not an {FORMAT} v{VERSION} file (format={data.get('format')!r}, "
                f"version={data.get('version')!r})"
            )
        tasks = {}
        for name, t in data["tasks"].items():
            t = dict(t)
            t["near_ties"] = [NearTie(**x) for x in t.get("near_ties", [])]
            t["bad_examples"] = [Issue(**x) for x in t.get("bad_examples", [])]
            t["examples"] = [ExampleResult(**x) for x in t.get("examples", [])]
            tasks[name] = TaskResult(**t)
        missing = [Issue(**x) for x in data.get("missing_tasks", [])]
        seconds = data.get("seconds", 0.0)
        return cls(model=data["model"], tasks=tasks, missing_tasks=missing, seconds=seconds)

    def save(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EvalResults:
        with open(path) as f:
            return cls.from_dict(json.load(f), source=os.fspath(path))
