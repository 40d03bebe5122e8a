"""`foundry report`: loss, learning-rate and throughput curves of one or more runs, as one PNG.

    foundry report runs=[runs/a,runs/b] out=curves.png
    foundry report runs=[runs/a/metrics.jsonl] x=tokens out=a.png

A run is a save folder or log dir holding `metrics.jsonl` (what `foundry train` writes through
composer-lite's `JSONLLogger`), a save folder whose `foundry_config.yaml` sets `log.log_dir`, or
the `.jsonl` file itself; it is read with `composer_lite.loggers.read_jsonl` (a file of another
format or version is refused). Three panels, one colour per run, the legend by run name:

- loss: `loss/train/total`, with `eval/loss` as dots where the run evaluated;
- learning rate: every `lr-<optimizer>/group<i>` (composer-lite's LR monitor);
- throughput: `throughput/tokens_per_sec` (all ranks).

A panel says which runs logged none of its metric. The x axis is the step, or with `x=tokens`
the tokens trained on: `time/token` when the run logged it (composer-lite >= 0.4.1 does: the real
tokens, a finetuning batch's padding left out), else step x the config's
`scheduler.tokens_per_batch` (every position of every row). A step logged twice (a run resumed from an earlier checkpoint
appends) keeps its last value. Every run is found before anything is read, and every run that
cannot be is named in one error; the PNG is written atomically and not over an existing file
without `overwrite=true`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from foundry.validate import need, opt

__all__ = [
    "METRICS_FILE",
    "PANELS",
    "Curves",
    "ReportCommand",
    "ReportError",
    "draw",
    "find_metrics",
    "load_runs",
    "read_curves",
    "run_command",
    "save_png",
]

METRICS_FILE = "metrics.jsonl"
# Each panel: its key, its title, and what it shows as the note of runs without it names it.
PANELS = (
    ("loss", "loss (train; eval as dots)", "a loss"),
    ("lr", "learning rate", "a learning rate"),
    ("throughput", "throughput (tokens/s, all ranks)", "throughput"),
)
LOSS, EVAL_LOSS, THROUGHPUT = "loss/train/total", "eval/loss", "throughput/tokens_per_sec"
LR_PREFIX, TOKENS = "lr-", "time/token"


class ReportError(ValueError):
    """Runs that cannot be drawn as asked; the message names each and what to change."""


@dataclass(frozen=True, kw_only=True)
class ReportCommand:
    """`foundry report`: loss, learning-rate and throughput curves of runs, from their JSONL."""

    runs: list[str] = need("save folders, log dirs or metrics .jsonl files")
    names: list[str] | None = opt(None, "legend names, one per run (default: the folder names)")
    out: str = opt("curves.png", "the PNG to write")
    x: Literal["steps", "tokens"] = opt("steps", "the x axis: optimizer steps or tokens")
    overwrite: bool = opt(False, "replace an existing out")

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("runs is empty: give runs=[runs/a,runs/b]")
        if self.names is not None and len(self.names) != len(self.runs):
            raise ValueError(f"names has {len(self.names)} entries for {len(self.runs)} runs")


@dataclass(frozen=True, kw_only=True)
class Curves:
    """One run's series, {step: value} each, and how its steps turn into tokens."""

    name: str
    source: str
    loss: dict[int, float] = field(default_factory=dict)
    eval_loss: dict[int, float] = field(default_factory=dict)
    lr: dict[str, dict[int, float]] = field(default_factory=dict)  # metric name -> series
    throughput: dict[int, float] = field(default_factory=dict)
    tokens: dict[int, float] = field(default_factory=dict)  # `time/token` by step, if logged
    tokens_per_step: int | None = None  # the config's scheduler.tokens_per_batch


def find_metrics(run: str) -> str:
    """The metrics file of a run: the `.jsonl` itself, `<folder>/metrics.jsonl`, or the one in
    the `log.log_dir` of the folder's `foundry_config.yaml`; FileNotFoundError names each place
    looked at."""
    if run.endswith(".jsonl"):
        if os.path.isfile(run):
            return run
        raise FileNotFoundError(f"{run} does not exist")
    looked = [os.path.join(run, METRICS_FILE)]
    if os.path.isfile(looked[0]):
        return looked[0]
    log_dir = _configured_log_dir(run)
    if log_dir is not None:
        looked.append(os.path.join(log_dir, METRICS_FILE))
        if os.path.isfile(looked[-1]):
            return looked[-1]
    why = "no such folder" if not os.path.isdir(run) else f"looked at {', '.join(looked)}"
    raise FileNotFoundError(f"{run} holds no {METRICS_FILE} ({why})")


def _configured_log_dir(folder: str) -> str | None:
    import yaml

    from foundry.train import CONFIG_FILE

    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    log_dir = (config.get("log") or {}).get("log_dir")
    return log_dir if isinstance(log_dir, str) else None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else math.nan  # a gap in the line


def read_curves(path: str, name: str) -> Curves:
    """A run's series from its metrics file (composer-lite's JSONL format)."""
    from composer_lite.loggers import read_jsonl

    series: dict[str, dict[int, float]] = {LOSS: {}, EVAL_LOSS: {}, THROUGHPUT: {}, TOKENS: {}}
    lr: dict[str, dict[int, float]] = {}
    tokens_per_step = None
    for record in read_jsonl(path):
        if record.get("kind") == "hyperparameters":
            scheduler = (record.get("config") or {}).get("scheduler")
            if isinstance(scheduler, dict) and isinstance(scheduler.get("tokens_per_batch"), int):
                tokens_per_step = scheduler["tokens_per_batch"]
        if record.get("kind") != "metrics":
            continue
        step = int(record["step"])
        for key, value in record["metrics"].items():
            number = _finite(value)
            if number is not None and key in series:
                series[key][step] = number
            elif number is not None and key.startswith(LR_PREFIX):
                lr.setdefault(key, {})[step] = number
    return Curves(
        name=name,
        source=path,
        loss=series[LOSS],
        eval_loss=series[EVAL_LOSS],
        lr=lr,
        throughput=series[THROUGHPUT],
        tokens=series[TOKENS],
        tokens_per_step=tokens_per_step,
    )


def _xs(curves: Curves, steps: list[int], x: str) -> list[float]:
    if x == "steps":
        return [float(s) for s in steps]
    if curves.tokens:
        return [curves.tokens.get(s, math.nan) for s in steps]
    assert curves.tokens_per_step is not None  # check_tokens refused the run otherwise
    return [float(s * curves.tokens_per_step) for s in steps]


def _check_tokens(curves: Curves, index: int) -> str | None:
    if curves.tokens or curves.tokens_per_step is not None:
        return None
    return (
        f"runs[{index}] ({curves.name}, {curves.source}) logged no token counts ({TOKENS}) and"
        " its config has no scheduler.tokens_per_batch"
    )


def _series(curves: Curves, panel: str) -> list[tuple[str, dict[int, float]]]:
    """(label suffix, series) of a run in a panel; empty when the run logged none."""
    if panel == "loss":
        return [("", curves.loss)] if curves.loss else []
    if panel == "throughput":
        return [("", curves.throughput)] if curves.throughput else []
    many = len(curves.lr) > 1
    return [(f" {key}" if many else "", series) for key, series in sorted(curves.lr.items())]


def _panel(ax: Any, runs: list[Curves], panel: str, title: str, what: str, x: str) -> None:
    missing = []
    for i, curves in enumerate(runs):
        series = _series(curves, panel)
        if not series:
            missing.append(curves.name)
        for suffix, values in series:
            steps = sorted(values)
            # the label names the run, and the LR group when a run has several
            xs, ys = _xs(curves, steps, x), [values[s] for s in steps]
            ax.plot(xs, ys, color=f"C{i}", label=curves.name + suffix)
        if panel == "loss" and curves.eval_loss:
            steps = sorted(curves.eval_loss)
            xs, ys = _xs(curves, steps, x), [curves.eval_loss[s] for s in steps]
            ax.plot(xs, ys, "o", color=f"C{i}", label=f"{curves.name} eval")
    ax.set_title(title)
    if len(missing) == len(runs):
        ax.text(0.5, 0.5, f"no run logged {what}", ha="center", va="center", transform=ax.transAxes)
    elif missing:
        ax.text(
            0.01,
            0.02,
            f"not logged by: {', '.join(missing)}",
            ha="left",
            va="bottom",
            transform=ax.transAxes,
            fontsize=8,
        )
    if ax.get_lines():
        ax.legend(fontsize=8)


def draw(runs: list[Curves], *, x: str = "steps") -> Any:
    """A matplotlib `Figure` of the three panels (no pyplot state); `save_png` writes it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("foundry report needs matplotlib: pip install matplotlib") from None
    figure = Figure(figsize=(8.0, 9.0))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(PANELS), 1, sharex=True)
    for ax, (panel, title, what) in zip(axes, PANELS, strict=True):
        _panel(ax, runs, panel, title, what, x)
    axes[-1].set_xlabel("step" if x == "steps" else "tokens")
    figure.tight_layout()
    return figure


def save_png(figure: Any, out: str) -> None:
    """Write the figure to `out` atomically (a partial file beside it, then a rename)."""
    folder, name = os.path.split(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    partial = os.path.join(folder, f".{name}.partial.png")  # savefig reads the format from it
    try:
        figure.savefig(partial, dpi=110)
        os.replace(partial, out)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _name(run: str, path: str) -> str:
    if run.endswith(".jsonl"):
        base = os.path.basename(run)[: -len(".jsonl")]
        parent = os.path.basename(os.path.dirname(os.path.abspath(run)))
        return parent if base == "metrics" and parent else base
    return os.path.basename(os.path.normpath(run)) or path


def load_runs(cfg: ReportCommand) -> list[Curves]:
    """Every run's curves; a `ReportError` names every run that cannot be found or drawn."""
    if os.path.exists(cfg.out) and not cfg.overwrite:
        raise ReportError(f"out={cfg.out} exists: pick another out, or overwrite=true")
    found, problems = [], []
    for i, run in enumerate(cfg.runs):
        try:
            found.append(find_metrics(run))
        except FileNotFoundError as err:
            problems.append(f"runs[{i}]: {err}")
    if problems:
        raise ReportError("cannot find every run:\n  " + "\n  ".join(problems))
    runs = [
        read_curves(path, cfg.names[i] if cfg.names else _name(cfg.runs[i], path))
        for i, path in enumerate(found)
    ]
    if cfg.x == "tokens":
        problems = [p for i, c in enumerate(runs) if (p := _check_tokens(c, i))]
        if problems:
            raise ReportError("\n".join(problems) + "\nuse x=steps for these runs")
    return runs


def run_command(cfg: ReportCommand, config_text: str) -> int:
    """`foundry report`: find and read every run, draw, write the PNG."""
    runs = load_runs(cfg)
    save_png(draw(runs, x=cfg.x), cfg.out)
    for curves in runs:
        lr_points = sum(len(v) for v in curves.lr.values())
        print(
            f"{curves.name}: {curves.source}: {len(curves.loss)} loss, {lr_points} learning-rate"
            f" and {len(curves.throughput)} throughput points"
        )
    print(f"wrote {cfg.out}")
    return 0
