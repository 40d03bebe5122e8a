"""Fit a scaling law of loss against compute, L(C) = E + A * C^-alpha, with its uncertainty.

    fit = fit_power_law(compute, loss)          # numpy only; pure functions
    print(fit.formula())                        # L = 1.71 ± 0.05 + 2.9e3 (±40%) * C^-(0.31 ± 0.02)
    p = fit.predict(6 * n_params * tokens)      # p.loss, and p.low..p.high at 95%

E is the irreducible loss (what no amount of compute removes), A and alpha the power law of the
part that compute does remove (Kaplan et al. 2020 fit a pure power law L(C) to the
compute-efficient frontier; Hoffmann et al. 2022 fit E + A/N^a + B/D^b, which along a fixed
allocation of compute between N and D is close to this one-variable form).
`compute_frontier` picks the points no cheaper point beats (the compute-optimal frontier), for a
fit of that frontier alone. `foundry.sweep` trains the points, fits and plots them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FitError",
    "PowerLawFit",
    "Prediction",
    "compute_frontier",
    "fit_power_law",
    "t_quantile",
]

# The exponents the first search tries (a log grid; the refinement then moves freely).
_ALPHA_GRID = np.geomspace(1e-3, 4.0, 400)
_MAX_ITERATIONS = 200


class FitError(ValueError):
    """Points that a power law with an irreducible term cannot be fitted to; says why."""


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """The fitted loss at `compute`, with a `level` prediction interval for one new run."""

    compute: float
    loss: float
    stderr: float  # of one new run's loss: the fit's own uncertainty and the points' scatter
    low: float
    high: float
    level: float

    def covers(self, loss: float) -> bool:
        return self.low <= loss <= self.high


@dataclass(frozen=True, kw_only=True)
class PowerLawFit:
    """L(C) = e + a * C^-alpha, fitted by least squares; `*_err` are standard errors.

    `covariance` is that of (e, log a_ref, alpha), where a_ref = a * c_ref^-alpha is the
    coefficient at `c_ref` (the points' geometric-mean compute), in which the fit is made:
    parameters about C = 1 would be correlated almost to 1. `e_at_bound`: the points show no
    floor, so E sits at its lower bound (a loss is never below 0), fixed there (e_err 0) while
    A and alpha are fitted."""

    e: float
    a: float
    alpha: float
    e_err: float
    a_err: float
    alpha_err: float
    c_ref: float
    covariance: tuple[tuple[float, float, float], ...]
    rss: float
    n_points: int
    e_at_bound: bool = False

    @property
    def dof(self) -> int:
        return self.n_points - (2 if self.e_at_bound else 3)

    @property
    def residual_std(self) -> float:
        """The points' scatter about the curve (the root of rss / dof)."""
        return math.sqrt(self.rss / self.dof)

    def loss_at(self, compute: float | np.ndarray) -> float | np.ndarray:
        return self.e + self.a * np.asarray(compute, dtype=float) ** -self.alpha

    def predict(self, compute: float, *, level: float = 0.95) -> Prediction:
        """The loss at `compute`, and the `level` interval in which one new run's loss should
        fall: the delta method through the Jacobian covariance, plus the residual scatter,
        scaled by Student's t with the fit's degrees of freedom."""
        if not compute > 0:
            raise FitError(f"compute must be positive, got {compute!r}")
        if not 0 < level < 1:
            raise FitError(f"level must be in (0, 1), got {level!r}")
        x = compute / self.c_ref
        term = math.exp(_log_a_ref(self)) * x**-self.alpha
        gradient = np.array([1.0, term, -term * math.log(x)])  # d L / d (e, log a_ref, alpha)
        mean_var = float(gradient @ np.array(self.covariance) @ gradient)
        stderr = math.sqrt(mean_var + self.residual_std**2)
        half = t_quantile(0.5 + level / 2, self.dof) * stderr
        loss = self.e + term
        return Prediction(
            compute=compute,
            loss=loss,
            stderr=stderr,
            low=loss - half,
            high=loss + half,
            level=level,
        )

    def formula(self) -> str:
        """`L = E ± e + A (±x%) * C^-(alpha ± a)`, each ± one standard error."""
        relative = 100 * self.a_err / self.a
        e = (
            f"{self.e:.4g} (at its bound)"
            if self.e_at_bound
            else f"{self.e:.4g} ± {self.e_err:.2g}"
        )
        return (
            f"L = {e} + {self.a:.4g} (±{relative:.0f}%)"
            f" * C^-({self.alpha:.4g} ± {self.alpha_err:.2g})"
        )


def _log_a_ref(fit: PowerLawFit) -> float:
    return math.log(fit.a) - fit.alpha * math.log(fit.c_ref)


def t_quantile(p: float, dof: int) -> float:
    """The `p` quantile (p > 0.5) of Student's t with `dof` degrees of freedom, from its density
    integrated numerically (numpy has no t distribution; the error is below 1e-4 for dof >= 1)."""
    if not 0.5 < p < 1 or dof < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and dof >= 1, got p={p}, dof={dof}")
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    # t = tan(u) maps u in [0, pi/2) onto the half-line, so the heavy tail of dof=1 is covered
    u = np.linspace(0.0, math.pi / 2, 200_001)[:-1]
    t = np.tan(u)
    density = np.exp(log_norm - (dof + 1) / 2 * np.log1p(t * t / dof)) / np.cos(u) ** 2
    steps = (density[1:] + density[:-1]) / 2 * np.diff(u)
    cdf = 0.5 + np.concatenate([[0.0], np.cumsum(steps)])
    return float(np.interp(p, cdf, t))


def compute_frontier(compute: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the points on the compute-optimal frontier, by increasing compute: those whose
    loss is lower than that of every point of less (or equal) compute."""
    compute, loss = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    order = np.lexsort((loss, compute))
    kept, best = [], math.inf
    for i in order:
        if loss[i] < best:
            kept.append(int(i))
            best = loss[i]
    return np.array(kept, dtype=int)


def _check_points(compute: np.ndarray, loss: np.ndarray) -> None:
    if compute.shape != loss.shape or compute.ndim != 1:
        raise FitError(
            f"compute and loss must be two 1-D arrays of one length, got shapes"
            f" {compute.shape} and {loss.shape}"
        )
    if len(compute) < 4:
        raise FitError(
            f"fitting E, A and alpha with an uncertainty needs at least 4 points, got"
            f" {len(compute)}"
        )
    if not (np.all(np.isfinite(compute)) and np.all(compute > 0)):
        raise FitError(f"every compute must be positive and finite, got {compute.tolist()}")
    if not np.all(np.isfinite(loss)):
        raise FitError(f"every loss must be finite, got {loss.tolist()}")
    if len(np.unique(compute)) < 3:
        raise FitError(
            f"the points need at least 3 distinct computes, got {len(np.unique(compute))}"
        )


def _linear_e_a(
    x: np.ndarray, loss: np.ndarray, alpha: float, e_min: float
) -> tuple[float, float, float]:
    """For a fixed alpha the law is linear in (E, A_ref): their least squares with E >= e_min
    (at the bound, A_ref alone), and the rss."""
    g = x**-alpha
    basis = np.stack([np.ones_like(x), g], axis=1)
    (e, a_ref), *_ = np.linalg.lstsq(basis, loss, rcond=None)
    if e < e_min:
        e, a_ref = e_min, float(g @ (loss - e_min) / (g @ g))
    rss = float(np.sum((loss - e - a_ref * g) ** 2))
    return float(e), float(a_ref), rss


def _start(x: np.ndarray, loss: np.ndarray, e_min: float) -> np.ndarray:
    """The best (E, log A_ref, alpha) over the alpha grid with A_ref > 0 (variable projection:
    the linear parameters solved exactly for each alpha, so no start is needed for them)."""
    best = None
    for alpha in _ALPHA_GRID:
        e, a_ref, rss = _linear_e_a(x, loss, alpha, e_min)
        if a_ref > 0 and (best is None or rss < best[0]):
            best = (rss, e, a_ref, alpha)
    if best is None:
        raise FitError(
            "the loss does not fall with compute anywhere in the points (no positive A fits):"
            " a power law with an irreducible term cannot describe them"
        )
    _, e, a_ref, alpha = best
    return np.array([e, math.log(a_ref), alpha])


def _residuals_and_jacobian(
    theta: np.ndarray, x: np.ndarray, loss: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    e, log_a, alpha = theta
    term = np.exp(log_a) * x**-alpha
    jacobian = np.stack([np.ones_like(x), term, -term * np.log(x)], axis=1)  # of the model
    return loss - (e + term), jacobian


def _levenberg_marquardt(
    theta: np.ndarray, x: np.ndarray, loss: np.ndarray, free: np.ndarray
) -> np.ndarray:
    """Least squares of the residuals in loss over the `free` parameters, from `theta`:
    Gauss-Newton steps, damped (by a multiple of diag(J^T J)) when a step would not lower the
    rss."""
    damping = 1e-3
    r, jac = _residuals_and_jacobian(theta, x, loss)
    rss = float(r @ r)
    for _ in range(_MAX_ITERATIONS):
        normal = jac[:, free].T @ jac[:, free]
        trial = theta.copy()
        trial[free] += np.linalg.solve(
            normal + damping * np.diag(np.diag(normal)), jac[:, free].T @ r
        )
        r_new, jac_new = _residuals_and_jacobian(trial, x, loss)
        rss_new = float(r_new @ r_new)
        if np.isfinite(rss_new) and rss_new <= rss:
            converged = rss - rss_new <= 1e-12 * max(rss, 1e-300)
            theta, r, jac, rss = trial, r_new, jac_new, rss_new
            damping = max(damping / 10, 1e-12)
            if converged:
                break
        else:
            damping *= 10
            if damping > 1e12:
                break
    return theta


def fit_power_law(compute: np.ndarray, loss: np.ndarray, *, e_min: float = 0.0) -> PowerLawFit:
    """Fit L(C) = E + A * C^-alpha to the points by least squares on the loss, with E >= e_min.

    Method: compute is scaled by its geometric mean c_ref (x = C / c_ref) and the law written
    E + A_ref * x^-alpha. A grid of alpha (1e-3 to 4, log-spaced) gives a start: for each alpha
    E and A_ref are linear, solved exactly (variable projection). Levenberg-Marquardt then refines
    (E, log A_ref, alpha) together; when the points show no floor (E would go below e_min, 0 by
    default: a cross-entropy is never negative) E is held at e_min and A, alpha are refined.
    Uncertainty: the covariance s^2 (J^T J)^-1 of the Jacobian J of the fitted parameters at the
    optimum, s^2 = rss / (n - fitted parameters); A's error by the delta method. Every point
    counts the same (homoscedastic residuals in loss). Needs >= 4 points, >= 3 distinct computes.
    """
    compute = np.asarray(compute, dtype=float)
    loss = np.asarray(loss, dtype=float)
    _check_points(compute, loss)
    c_ref = float(np.exp(np.mean(np.log(compute))))
    x = compute / c_ref
    theta = _start(x, loss, e_min)
    free = np.array([theta[0] > e_min, True, True])
    theta = _levenberg_marquardt(theta, x, loss, free)
    if theta[0] < e_min:  # refined past the bound: hold E there
        theta[0], free[0] = e_min, False
        theta = _levenberg_marquardt(theta, x, loss, free)
    r, jac = _residuals_and_jacobian(theta, x, loss)
    rss = float(r @ r)
    normal = jac[:, free].T @ jac[:, free]
    if np.linalg.cond(normal) > 1e14:
        raise FitError(
            "the fit is degenerate (its Jacobian has no full rank): the points do not pin down"
            " E, A and alpha; add points over a wider range of compute"
        )
    covariance = np.zeros((3, 3))
    covariance[np.ix_(free, free)] = rss / (len(x) - free.sum()) * np.linalg.inv(normal)
    e, log_a_ref, alpha = (float(v) for v in theta)
    log_c = math.log(c_ref)
    # log A = log A_ref + alpha * log c_ref
    log_a_var = covariance[1, 1] + log_c**2 * covariance[2, 2] + 2 * log_c * covariance[1, 2]
    a = math.exp(log_a_ref + alpha * log_c)
    return PowerLawFit(
        e=e,
        a=a,
        alpha=alpha,
        e_err=math.sqrt(covariance[0, 0]),
        a_err=a * math.sqrt(max(log_a_var, 0.0)),
        alpha_err=math.sqrt(covariance[2, 2]),
        c_ref=c_ref,
        covariance=tuple(tuple(float(v) for v in row) for row in covariance),
        rss=rss,
        n_points=len(x),
        e_at_bound=not free[0],
    )
