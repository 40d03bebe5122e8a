"""The eval gauntlet: benchmarks grouped in categories, random baselines removed, averages.

    gauntlet = load_gauntlet("eval_gauntlet_v0.3.yaml")
    scores = score_gauntlet(gauntlet, results)     # GauntletResult

The definitions are llm-foundry's (`eval_gauntlet` in its YAML): each benchmark
`name`/`num_fewshot` is matched with the task `name/N-shot` of the results and its score (the
primary metric; the mean over categories for a task with categories) becomes
`(score - random_baseline) / (1 - random_baseline)` with `subtract_random_baseline` and
`rescale_accuracy` (`score - random_baseline` with the first only). A category is the weighted
mean of its benchmarks (`weighting`: EQUAL, SAMPLE_SZ: by example count, LOG_SAMPLE_SZ: by
max(log2(count), 1)); each `averages` entry is the plain mean of its categories.

llm-foundry drops a category when one of its benchmarks was not run. `on_missing="partial"` (the
default here) scores it over the benchmarks that ran and lists the missing ones, so a subset of
tasks (the twelve of the MPT-7B table) still gives category scores; `on_missing="drop"` is
llm-foundry's rule.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from statistics import fmean

from evalkit.results import EvalResults
from evalkit.tasks import read_yaml

__all__ = [
    "WEIGHTINGS",
    "Benchmark",
    "Category",
    "Gauntlet",
    "GauntletResult",
    "load_gauntlet",
    "score_gauntlet",
]

WEIGHTINGS = {
    "EQUAL": lambda n: 1.0,
    "SAMPLE_SZ": lambda n: float(max(n, 1)),
    "LOG_SAMPLE_SZ": lambda n: max(math.log2(max(n, 1)), 1.0),
}


@dataclass(frozen=True)
class Benchmark:
    name: str
    num_fewshot: int
    random_baseline: float

    @property
    def task(self) -> str:
        return f"{self.name}/{self.num_fewshot}-shot"


@dataclass(frozen=True)
class Category:
    name: str
    benchmarks: tuple[Benchmark, ...]


@dataclass(frozen=True, kw_only=True)
class Gauntlet:
    """A gauntlet definition (see the module docstring)."""

    categories: tuple[Category, ...]
    averages: dict[str, tuple[str, ...]] = field(default_factory=dict)
    weighting: str = "EQUAL"
    subtract_random_baseline: bool = True
    rescale_accuracy: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.weighting not in WEIGHTINGS:
            problems.append(f"weighting {self.weighting!r} (choose from {sorted(WEIGHTINGS)})")
        if self.rescale_accuracy and not self.subtract_random_baseline:
            problems.append("rescale_accuracy needs subtract_random_baseline")
        names = {c.name for c in self.categories}
        for average, members in self.averages.items():
            unknown = sorted(set(members) - names)
            if unknown:
                problems.append(f"average {average!r} names unknown categories {unknown}")
        if problems:
            raise ValueError("invalid gauntlet: " + "; ".join(problems))


@dataclass
class GauntletResult:
    """Benchmark scores (after baseline and rescaling), category and average scores, and the
    benchmarks each category lacked."""

    benchmarks: dict[str, float] = field(default_factory=dict)
    categories: dict[str, float] = field(default_factory=dict)
    averages: dict[str, float] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)
    coverage: dict[str, tuple[int, int]] = field(default_factory=dict)  # average: (scored, named)

    def metrics(self) -> dict[str, float]:
        """Flat {name: value} ("gauntlet/world_knowledge", "gauntlet/core_average", ...)."""
        out = {f"gauntlet/{k}": v for k, v in self.categories.items()}
        out.update({f"gauntlet/{k}": v for k, v in self.averages.items()})
        return out


def _where(path: str, node: object) -> str:
    line = getattr(node, "line", 0)
    return f"{path}:{line}" if line else path


def load_gauntlet(path: str | os.PathLike[str]) -> Gauntlet:
    """Read the `eval_gauntlet` section of a YAML file; errors name the file and line."""
    where = os.fspath(path)
    data = read_yaml(path)
    spec = data.get("eval_gauntlet", data) if isinstance(data, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("categories"), list):
        raise ValueError(f"{where}:1: expected 'eval_gauntlet' with a list of 'categories'")
    known = {"weighting", "subtract_random_baseline", "rescale_accuracy", "averages", "categories"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"{_where(where, spec)}: unknown gauntlet keys {unknown}")
    categories = []
    for cat in spec["categories"]:
        try:
            benchmarks = tuple(
                Benchmark(str(b["name"]), int(b["num_fewshot"]), float(b["random_baseline"]))
                for b in cat["benchmarks"]
            )
            categories.append(Category(str(cat["name"]), benchmarks))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{_where(where, cat)}: a category needs a name and benchmarks with name, "
                f"num_fewshot and random_baseline ({type(err).__name__}: {err})"
            ) from None
    averages = {k: tuple(v) for k, v in (spec.get("averages") or {}).items()}
    return Gauntlet(
        categories=tuple(categories),
        averages=averages,
        weighting=spec.get("weighting", "EQUAL"),
        subtract_random_baseline=spec.get("subtract_random_baseline", True),
        rescale_accuracy=spec.get("rescale_accuracy", True),
    )


def score_gauntlet(
    gauntlet: Gauntlet, results: EvalResults, *, on_missing: str = "partial"
) -> GauntletResult:
    """The gauntlet's scores for `results` (see the module docstring for `on_missing`)."""
    if on_missing not in ("partial", "drop"):
        raise ValueError(f"on_missing must be 'partial' or 'drop', got {on_missing!r}")
    out = GauntletResult()
    weight_of = WEIGHTINGS[gauntlet.weighting]
    for category in gauntlet.categories:
        parts, missing = [], []
        for bench in category.benchmarks:
            task = results.tasks.get(bench.task)
            if task is None or task.n_examples == 0:
                missing.append(bench.task)
                continue
            score = task.score
            if gauntlet.subtract_random_baseline:
                score -= bench.random_baseline
                if gauntlet.rescale_accuracy:
                    score /= 1.0 - bench.random_baseline
            out.benchmarks[bench.task] = score
            parts.append((score, weight_of(task.n_examples)))
        if missing:
            out.missing[category.name] = missing
        if not parts or (missing and on_missing == "drop"):
            continue
        total = sum(w for _, w in parts)
        out.categories[category.name] = sum(s * w for s, w in parts) / total
    # llm-foundry's "average" of every category when the YAML names no averages
    averages = gauntlet.averages or {"average": tuple(c.name for c in gauntlet.categories)}
    for average, members in averages.items():
        present = [out.categories[m] for m in members if m in out.categories]
        out.coverage[average] = (len(present), len(members))
        if present:
            out.averages[average] = fmean(present)
    return out
