"""Reports of evaluation results: a markdown table, a bar chart, and two models side by side.

    print(markdown([results_a, results_b], gauntlet=load_gauntlet("eval_gauntlet_v0.3.yaml")))
    plot([results_a], "gauntlet.png", gauntlet=gauntlet)   # needs the `plot` extra (matplotlib)
    compare("a.json", "b.json")                             # prints task | a | b | b - a

The task table shows each task's score (its primary metric, named in the table), the gauntlet
table each category and average; after them come the problems: missing tasks, bad examples and
near ties, each with file and line, so nothing that was not evaluated goes unmentioned.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from evalkit.gauntlet import Gauntlet, GauntletResult, score_gauntlet
from evalkit.results import EvalResults

__all__ = ["MAX_LISTED", "compare", "markdown", "plot"]

# Problems of one kind listed by name in a report; the rest are counted.
MAX_LISTED = 20

_METRIC_NOTES = {
    "acc": "fraction correct (raw log-likelihood for choices; greedy match or generated answer)",
    "acc_norm_tokens": "choices by mean log-probability per token (llm-foundry's accuracy)",
    "acc_norm_chars": "choices by log-probability per character (lm-eval's acc_norm)",
}


def _fmt(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _task_rows(results: Sequence[EvalResults]) -> list[list[str]]:
    names = list(dict.fromkeys(n for r in results for n in r.tasks))
    rows = []
    for name in names:
        first = next(r.tasks[name] for r in results if name in r.tasks)
        metric = f"{first.primary} (category mean)" if first.categories else first.primary
        cells = [_fmt(r.tasks[name].score) if name in r.tasks else "–" for r in results]
        rows.append([name, first.task_type, metric, str(first.n_examples), *cells])
    return rows


def _gauntlet_rows(scores: list[GauntletResult]) -> list[list[str]]:
    rows = []
    names = list(dict.fromkeys(c for s in scores for c in [*s.categories, *s.missing]))
    for name in names:
        missing = max((len(s.missing.get(name, [])) for s in scores), default=0)
        note = f" (benchmarks not run: {missing})" if missing else ""
        rows.append([name + note, *[_fmt(s.categories.get(name)) for s in scores]])
    averages = list(dict.fromkeys(a for s in scores for a in s.coverage))
    for average in averages:
        scored, named = min(s.coverage.get(average, (0, 0)) for s in scores)
        note = f" (over {scored} of {named} categories)" if scored < named else ""
        rows.append([f"**{average}**{note}", *[_fmt(s.averages.get(average)) for s in scores]])
    return rows


def _problems(result: EvalResults) -> list[str]:
    lines = []
    groups = [
        ("missing tasks", [str(i) for i in result.missing_tasks]),
        ("bad examples", [str(i) for i in result.bad_examples]),
        ("near ties (|difference| < tolerance)", [str(t) for t in result.near_ties]),
    ]
    for title, items in groups:
        if not items:
            continue
        lines.append(f"{result.model}: {len(items)} {title}:")
        lines += [f"- {item}" for item in items[:MAX_LISTED]]
        if len(items) > MAX_LISTED:
            lines.append(f"- ... and {len(items) - MAX_LISTED} more (all in the JSON results)")
    return lines


def markdown(results: Sequence[EvalResults], *, gauntlet: Gauntlet | None = None) -> str:
    """Tasks x models, then the gauntlet's categories and averages, then every problem."""
    models = [r.model for r in results]
    lines = ["## Tasks", ""]
    lines += _table(
        ["task", "type", "metric", "examples", *models],
        _task_rows(results),
        "lllr" + "r" * len(models),
    )
    used = sorted({t.primary for r in results for t in r.tasks.values()})
    lines += [""] + [f"- `{m}`: {_METRIC_NOTES[m]}" for m in used if m in _METRIC_NOTES]
    if gauntlet is not None:
        scores = [score_gauntlet(gauntlet, r) for r in results]
        lines += ["", "## Gauntlet", ""]
        lines += _table(["category", *models], _gauntlet_rows(scores), "l" + "r" * len(models))
        lines += ["", "Scores are accuracy minus the random baseline, rescaled to 1."]
    problems = [line for r in results for line in _problems(r)]
    if problems:
        lines += ["", "## Problems", "", *problems]
    return "\n".join(lines) + "\n"


def _load(result: EvalResults | str | os.PathLike[str]) -> EvalResults:
    return result if isinstance(result, EvalResults) else EvalResults.load(result)


def compare(
    a: EvalResults | str | os.PathLike[str],
    b: EvalResults | str | os.PathLike[str],
    *,
    gauntlet: Gauntlet | None = None,
    file: TextIO | None = None,
    echo: bool = True,
) -> str:
    """Return two results side by side with differences; print them (to `file`, default
    stdout) unless `echo` is False."""
    ra, rb = _load(a), _load(b)
    rows = []
    for name in dict.fromkeys([*ra.tasks, *rb.tasks]):
        va = ra.tasks[name].score if name in ra.tasks else None
        vb = rb.tasks[name].score if name in rb.tasks else None
        diff = f"{vb - va:+.4f}" if va is not None and vb is not None else "–"
        rows.append([name, _fmt(va), _fmt(vb), diff])
    if gauntlet is not None:
        ga, gb = score_gauntlet(gauntlet, ra), score_gauntlet(gauntlet, rb)
        for name in dict.fromkeys([*ga.categories, *ga.averages, *gb.categories, *gb.averages]):
            va = ga.categories.get(name, ga.averages.get(name))
            vb = gb.categories.get(name, gb.averages.get(name))
            diff = f"{vb - va:+.4f}" if va is not None and vb is not None else "–"
            rows.append([f"gauntlet/{name}", _fmt(va), _fmt(vb), diff])
    text = "\n".join(_table(["task", ra.model, rb.model, "difference"], rows, "lrrr")) + "\n"
    if echo:
        (file or sys.stdout).write(text)
    return text


def plot(
    results: Sequence[EvalResults],
    path: str | os.PathLike[str],
    *,
    gauntlet: Gauntlet | None = None,
) -> str:
    """A bar chart PNG: gauntlet categories and averages per model (task scores without a
    gauntlet). Needs matplotlib (`pip install 'evalkit[plot]'`); returns the path."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plot needs matplotlib: pip install 'evalkit[plot]'") from None
    if gauntlet is not None:
        scores = [score_gauntlet(gauntlet, r) for r in results]
        series = [{**s.categories, **s.averages} for s in scores]
        title = "eval gauntlet (accuracy above random, rescaled)"
    else:
        series = [{n: t.score for n, t in r.tasks.items()} for r in results]
        title = "task scores"
    labels = list(dict.fromkeys(k for s in series for k in s))
    figure = Figure(figsize=(max(6.0, 0.8 * len(labels) * max(len(results), 1)), 4.5))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    width = 0.8 / max(len(results), 1)
    for i, (result, values) in enumerate(zip(results, series, strict=True)):
        xs = [j + i * width for j in range(len(labels))]
        ys = [values.get(label, float("nan")) for label in labels]
        ax.bar(xs, ys, width=width, label=result.model)
    ax.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(labels))], labels, rotation=30, ha="right"
    )
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_title(title)
    ax.legend()
    figure.tight_layout()
    figure.savefig(os.fspath(path), dpi=120)
    return os.fspath(path)
