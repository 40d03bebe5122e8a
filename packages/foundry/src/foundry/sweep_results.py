"""What `foundry sweep` keeps of its finished points and makes of them: the records of
`out/sweep.jsonl` (`PointResult`, one JSON line each, format `RECORD_FORMAT`), the fit and the
prediction (`fit_points`), the table printed (`report_text`) and the plot (`plot_sweep`, a PNG).

Kept apart from `foundry.sweep` (which plans and trains the points) so that the records, the
arithmetic and the drawing can be read, and tested, without training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from foundry.scaling import PowerLawFit, Prediction, compute_frontier, fit_power_law

if TYPE_CHECKING:
    from foundry.sweep import Point

__all__ = [
    "RECORD_FORMAT",
    "RESULTS_FILE",
    "PointResult",
    "SweepError",
    "SweepSummary",
    "append_result",
    "fit_points",
    "plain_data",
    "plot_sweep",
    "read_results",
    "report_text",
    "settings_digest",
]

log = logging.getLogger(__name__)

RECORD_FORMAT = 1  # of each line of sweep.jsonl; a reader refuses any other
RESULTS_FILE = "sweep.jsonl"


class SweepError(ValueError):
    """A sweep that cannot run as configured; the message names the setting and what to change."""


@dataclass(frozen=True, kw_only=True)
class PointResult:
    """One finished point, one line of sweep.jsonl."""

    name: str
    role: Literal["sweep", "target"]
    d_model: int
    n_layers: int
    n_heads: int
    params: int
    non_embedding_params: int
    steps: int
    tokens: int
    compute: float
    eval_loss: float
    train_loss: float | None
    seconds: float
    settings: str  # digest of the point's training config (save folder and logs aside)

    def to_json(self) -> str:
        return json.dumps({"format": RECORD_FORMAT, **dataclasses.asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, line: str, *, where: str) -> PointResult:
        record = json.loads(line)
        if record.get("format") != RECORD_FORMAT:
            raise SweepError(
                f"{where}: record format {record.get('format')!r}, but this foundry reads format"
                f" {RECORD_FORMAT}: use the foundry that wrote it, or another out folder"
            )
        record.pop("format")
        return cls(**record)


def read_results(out: str) -> dict[str, PointResult]:
    """The finished points recorded in `out/sweep.jsonl`, by name ({} when there is none). A last
    line cut short (a crash while writing it) is skipped; any other bad line is an error."""
    path = os.path.join(out, RESULTS_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        lines = f.read().splitlines()
    results = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            result = PointResult.from_json(line, where=f"{path}:{number}")
        except (json.JSONDecodeError, TypeError) as err:
            if number == len(lines):
                log.warning("%s:%d: an unfinished record, ignored (%s)", path, number, err)
                continue
            raise SweepError(f"{path}:{number}: not a sweep record ({err})") from None
        results[result.name] = result
    return results


def append_result(out: str, result: PointResult) -> None:
    """Add one finished point to `out/sweep.jsonl` (flushed to disk before the next point)."""
    with open(os.path.join(out, RESULTS_FILE), "a") as f:
        f.write(result.to_json() + "\n")
        f.flush()
        os.fsync(f.fileno())


@dataclass(frozen=True, kw_only=True)
class SweepSummary:
    """The fit of a sweep, the points it was fitted on, and the target's predicted (and, when
    it was trained, measured) loss."""

    fit: PowerLawFit
    fit_on: Literal["all", "frontier"]
    fitted: tuple[str, ...]  # names of the points in the fit
    target_name: str
    target_params: int  # non-embedding
    target_tokens: int
    prediction: Prediction
    measured: float | None

    def to_dict(self) -> dict[str, Any]:
        fit, p = self.fit, self.prediction
        return {
            "law": "L(C) = E + A * C^-alpha, C = 6 N D, N non-embedding parameters",
            "fit_on": self.fit_on,
            "points": list(self.fitted),
            "E": fit.e,
            "E_err": fit.e_err,
            "E_at_bound": fit.e_at_bound,
            "A": fit.a,
            "A_err": fit.a_err,
            "alpha": fit.alpha,
            "alpha_err": fit.alpha_err,
            "c_ref": fit.c_ref,
            "covariance_E_logAref_alpha": [list(row) for row in fit.covariance],
            "rss": fit.rss,
            "residual_std": fit.residual_std,
            "target": {
                "name": self.target_name,
                "non_embedding_params": self.target_params,
                "tokens": self.target_tokens,
                "compute": p.compute,
                "predicted_loss": p.loss,
                "stderr": p.stderr,
                "interval": [p.low, p.high],
                "level": p.level,
                "measured_loss": self.measured,
            },
        }


def plain_data(value: Any) -> Any:
    """Dataclasses, tuples and dicts as plain JSON/YAML data."""
    if dataclasses.is_dataclass(value):
        return {f.name: plain_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_data(v) for k, v in value.items()}
    return value


def settings_digest(train: Any) -> str:
    """A digest of what decides a point's loss: its whole `TrainCommand` but the save folder,
    run name, logging and the tokenizer check (so a sweep folder that is moved still reads
    back)."""
    plain = plain_data(train)
    for key in ("save_folder", "run_name", "log", "save_interval", "tokenizer"):
        plain.pop(key, None)
    text = json.dumps(plain, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fit_points(
    results: list[PointResult],
    target: Point,
    *,
    fit_on: Literal["all", "frontier"],
    level: float,
    measured: PointResult | None = None,
) -> SweepSummary:
    """Fit L(C) to the points (all, or the compute-optimal frontier) and predict the target."""
    compute = np.array([r.compute for r in results])
    loss = np.array([r.eval_loss for r in results])
    chosen = np.arange(len(results)) if fit_on == "all" else compute_frontier(compute, loss)
    if len(chosen) < 4:
        raise SweepError(
            f"fit_on={fit_on}: {len(chosen)} of the {len(results)} points to fit, and a fit of E, A"
            " and alpha with an uncertainty needs at least 4: add sizes or budgets, or"
            " fit_on=all (the points stay recorded: a rerun trains none of them again)"
        )
    fit = fit_power_law(compute[chosen], loss[chosen])
    return SweepSummary(
        fit=fit,
        fit_on=fit_on,
        fitted=tuple(results[i].name for i in sorted(chosen)),
        target_name=target.name,
        target_params=target.non_embedding_params,
        target_tokens=target.tokens,
        prediction=fit.predict(target.compute, level=level),
        measured=None if measured is None else measured.eval_loss,
    )


def report_text(results: list[PointResult], summary: SweepSummary) -> str:
    """The table of points, the fit with its standard errors, the prediction (and the measured
    loss of the target with its error, when it was trained)."""
    fit, p = summary.fit, summary.prediction
    width = max(len(r.name) for r in results) + 2
    lines = [
        f"sweep results: {len(results)} points, held-out loss (eval/loss on eval_data)",
        f"{'point':<{width}}{'N (non-emb)':>12}{'tokens':>12}{'compute C':>12}"
        f"{'eval loss':>11}  fitted",
    ]
    for r in sorted(results, key=lambda r: r.compute):
        mark = "*" if r.name in summary.fitted else ""
        lines.append(
            f"{r.name:<{width}}{r.non_embedding_params:>12,}{r.tokens:>12,}{r.compute:>12.3e}"
            f"{r.eval_loss:>11.4f}  {mark}"
        )
    which = "all" if summary.fit_on == "all" else "the compute-optimal frontier's"
    lines += [
        "",
        f"fit on {which} {len(summary.fitted)} points (least squares; ± one standard error from"
        " the Jacobian covariance):",
        f"  {fit.formula()}   (C = 6 N D; residual std {fit.residual_std:.3g})",
        f"prediction for {summary.target_name} (N = {summary.target_params:,},"
        f" D = {summary.target_tokens:,} tokens, C = {p.compute:.3e}):",
        f"  loss {p.loss:.4f}, {p.level:.0%} interval {p.low:.4f} .. {p.high:.4f}",
    ]
    if summary.measured is not None:
        error = summary.measured - p.loss
        inside = "inside" if p.covers(summary.measured) else "OUTSIDE"
        lines.append(
            f"measured: {summary.measured:.4f} (error {error:+.4f},"
            f" {100 * error / summary.measured:+.1f}% of the measured; {inside} the interval)"
        )
    return "\n".join(lines)


def plot_sweep(results: list[PointResult], summary: SweepSummary, path: str) -> str:
    """Draw the points (one colour per model size), the fitted curve, E, the prediction with its
    interval and the measured target, against compute on a log axis; write a PNG at `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fit, p = summary.fit, summary.prediction
    figure = Figure(figsize=(7.5, 5.0))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    sizes = sorted({(r.non_embedding_params, r.d_model, r.n_layers, r.n_heads) for r in results})
    for n, d, layers, heads in sizes:
        mine = [r for r in results if (r.d_model, r.n_layers, r.n_heads) == (d, layers, heads)]
        ax.plot(
            [r.compute for r in mine],
            [r.eval_loss for r in mine],
            "o",
            label=f"d_model {d}, {layers} layers (N = {n:,})",
        )
    computes = [r.compute for r in results] + [p.compute]
    grid = np.geomspace(min(computes) / 1.5, max(computes) * 1.5, 200)
    ax.plot(grid, fit.loss_at(grid), "-", color="black", label=fit.formula())
    ax.axhline(fit.e, linestyle=":", color="grey", label=f"E = {fit.e:.3g}")
    ax.errorbar(
        [p.compute],
        [p.loss],
        yerr=[[p.loss - p.low], [p.high - p.loss]],
        fmt="D",
        color="red",
        capsize=4,
        label=f"predicted {summary.target_name}: {p.loss:.3f} ({p.level:.0%})",
    )
    if summary.measured is not None:
        ax.plot(
            [p.compute],
            [summary.measured],
            "*",
            color="black",
            markersize=12,
            label=f"measured: {summary.measured:.3f}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("compute C = 6 N D (FLOPs; N non-embedding parameters)")
    ax.set_ylabel("held-out loss")
    ax.set_title(f"foundry sweep: fit on {summary.fit_on} points")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, format="png", dpi=120)
    return path
