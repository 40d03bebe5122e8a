"""Guards: a step that goes wrong is never silently trained through, and a hung job ends.

`Guard` (BEFORE_OPTIMIZER_STEP) looks at the step's loss and gradient norm, which the Trainer
has already made the same on every rank (`state.step.loss`: the token-weighted mean over all
ranks; `state.step.grad_norm`: the total norm), so every rank takes the same decision without a
collective of its own. A non-finite loss or gradient, or a loss above `spike_factor` times the
running mean of the last `spike_window` accepted losses, triggers its policy:

    skip      state.skip_step = True: the Trainer zeroes the gradients and does not step
    rollback  state.request_rollback(reason): the Trainer skips the step and restores the
              model, optimizer and scheduler from the last checkpoint (an error if none)
    stop      raise TrainingDivergedError naming the step, the loss and the gradient norm

With amp_fp16, a non-finite gradient under a finite loss is the gradient scaler's business (it
skips the step and lowers the scale), so the guard leaves it alone. More than
`max_consecutive` triggered steps in a row raise TrainingDivergedError whatever the policy:
skipping forever is training through by other means.

`HangWatchdog` is a thread that ends the process (`os._exit`, after printing and flushing a
message naming the rank, the step and the wait) when a step takes longer than `timeout`
seconds, so that torchrun sees a failed worker and can restart the job from its last
checkpoint. Evaluation and the time between batches (data, checkpoints) get their own
allowances; None leaves a phase unwatched. If `fit()` ends by an exception (no FIT_END), the
watchdog notices that the thread has left it and stands down instead of killing the process
later. (A collective that hangs inside torch.distributed also ends at the process group's own
timeout, `TrainerConfig.dist_timeout`; the watchdog covers what that misses, and names the step.)
"""

from __future__ import annotations

import faulthandler
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from typing import Any

from composer_lite.config import POLICIES, GuardConfig, guard_problems
from composer_lite.core import Callback, Logger, State

__all__ = ["POLICIES", "Guard", "HangWatchdog", "TrainingDivergedError"]

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The guard's 'stop' policy, or too many bad steps in a row."""

    def __init__(self, *, step: int, loss: float, grad_norm: float, reason: str) -> None:
        self.step, self.loss, self.grad_norm, self.reason = step, loss, grad_norm, reason
        super().__init__(
            f"training diverged at step {step}: {reason} (loss {loss}, gradient norm {grad_norm})"
        )


class Guard(Callback):
    """Applies the `GuardConfig` policies at BEFORE_OPTIMIZER_STEP (see the module docstring).

    Adds `guard/skipped_steps`, `guard/rollbacks` (totals) and `guard/loss_mean` (the running
    mean spikes are judged against) to the step's metrics.
    """

    def __init__(self, config: GuardConfig | None = None, *, max_consecutive: int = 10) -> None:
        config = config or GuardConfig()
        bad = guard_problems(config)  # again: a GuardConfig's fields may be changed after it
        if not (isinstance(max_consecutive, int) and max_consecutive >= 1):
            bad.append(f"max_consecutive={max_consecutive!r} (expected a positive int)")
        if bad:
            raise ValueError(f"bad guard settings: {', '.join(bad)}; policies are {POLICIES}")
        self.config, self.max_consecutive = config, max_consecutive
        self.losses: deque[float] = deque(maxlen=config.spike_window)
        self.skipped = self.rollbacks = self.consecutive = 0
        self.reason = ""  # why the last triggered step triggered

    def running_mean(self) -> float | None:
        """The mean of the last `spike_window` accepted losses, once there are that many."""
        if len(self.losses) < self.config.spike_window:
            return None
        return sum(self.losses) / len(self.losses)

    def judge(self, loss: float, grad_norm: float, precision: str = "fp32") -> str | None:
        """The policy this step triggers ('skip', 'rollback', 'stop'), or None if it is fine;
        a fine step's loss joins the running mean. `reason` tells why after a trigger."""
        cfg = self.config
        if not math.isfinite(loss) or not (math.isfinite(grad_norm) or precision == "amp_fp16"):
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            self.reason = f"non-finite {what}"
            return cfg.on_nonfinite
        mean = self.running_mean()
        if cfg.spike_factor is not None and mean is not None and loss > cfg.spike_factor * mean:
            self.reason = (
                f"loss spike: {loss:.4g} > {cfg.spike_factor:g} x running mean {mean:.4g} "
                f"(last {cfg.spike_window} steps)"
            )
            return cfg.on_spike
        self.losses.append(loss)
        return None

    def before_optimizer_step(self, state: State, logger: Logger) -> None:
        if state.step is None:
            raise RuntimeError(
                "the guard needs state.step (the step's loss and gradient norm), which the "
                "Trainer sets before BEFORE_OPTIMIZER_STEP; it is None"
            )
        loss, grad_norm = state.step.loss, state.step.grad_norm
        step = state.timestamp.batch + 1
        policy = self.judge(loss, grad_norm, state.precision)
        if policy is None:
            self.consecutive = 0
        else:
            self.consecutive += 1
            if policy == "stop" or self.consecutive > self.max_consecutive:
                reason = self.reason
                if policy != "stop":
                    reason += f"; {self.consecutive} bad steps in a row (max_consecutive {self.max_consecutive})"
                raise TrainingDivergedError(
                    step=step, loss=loss, grad_norm=grad_norm, reason=reason
                )
            log.warning(
                "step %d: %s: %s (loss %s, grad norm %s)",
                step,
                self.reason,
                policy,
                loss,
                grad_norm,
            )
            if policy == "skip":
                state.skip_step = True
                self.skipped += 1
            else:
                state.request_rollback(f"{self.reason} at step {step}")
                self.rollbacks += 1
        mean = self.running_mean()
        state.metrics.update(
            {"guard/skipped_steps": self.skipped, "guard/rollbacks": self.rollbacks}
        )
        if mean is not None:
            state.metrics["guard/loss_mean"] = mean

    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": list(self.losses),
            "skipped": self.skipped,
            "rollbacks": self.rollbacks,
            "consecutive": self.consecutive,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = deque(
            (float(x) for x in state.get("losses", ())), maxlen=self.config.spike_window
        )
        self.skipped = int(state.get("skipped", 0))
        self.rollbacks = int(state.get("rollbacks", 0))
        self.consecutive = int(state.get("consecutive", 0))


class HangWatchdog(Callback):
    """End the process when a phase of the loop outlasts its allowance (seconds).

    timeout:            one training step (BATCH_START to BATCH_END).
    first_step_timeout: the first step of the fit (compilation, warm-up); default `timeout`.
    eval_timeout:       one evaluation (EVAL_START to EVAL_END); None: not watched.
    between_timeout:    from BATCH_END to the next BATCH_START (data, logging, checkpoint
                        writing); None: not watched.
    exit_code:          the process's exit status (75, EX_TEMPFAIL: "try again").
    """

    def __init__(
        self,
        timeout: float,
        *,
        first_step_timeout: float | None = None,
        eval_timeout: float | None = None,
        between_timeout: float | None = None,
        exit_code: int = 75,
    ) -> None:
        allowances = {
            "timeout": timeout,
            "first_step_timeout": first_step_timeout,
            "eval_timeout": eval_timeout,
            "between_timeout": between_timeout,
        }
        bad = [f"{k}={v!r}" for k, v in allowances.items() if v is not None and not v > 0]
        if timeout is None or bad:
            raise ValueError(
                f"HangWatchdog allowances must be positive seconds; got {', '.join(bad) or 'timeout=None'}"
            )
        if not (isinstance(exit_code, int) and 0 < exit_code < 256):
            raise ValueError(f"exit_code must be in 1..255, got {exit_code!r}")
        self.timeout, self.first_step_timeout = float(timeout), first_step_timeout
        self.eval_timeout, self.between_timeout = eval_timeout, between_timeout
        self.exit_code = exit_code
        self._lock = threading.Lock()
        self._phase: tuple[str, float, float] | None = None  # (what, since, allowance)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rank = 0
        self._step = 0
        self._first = True
        self._fit_thread: int | None = None
        self._fit_frame: Any = None  # the frame of the `fit()` that ran FIT_START, if any

    def _watch(self, what: str, allowance: float | None) -> None:
        with self._lock:
            self._phase = None if allowance is None else (what, time.monotonic(), float(allowance))

    def _fit_returned(self) -> bool:
        """Whether the thread that ran FIT_START has left `fit()` without FIT_END (an exception
        ended the run): then there is nothing left to watch."""
        if self._fit_frame is None:
            return False
        frame = sys._current_frames().get(self._fit_thread)
        while frame is not None:
            if frame is self._fit_frame:
                return False
            frame = frame.f_back
        return True

    def _run(self) -> None:
        poll = min(1.0, self.timeout / 4)
        while not self._stop.wait(poll):
            if self._fit_returned():
                self._fit_frame = None
                return
            with self._lock:
                phase = self._phase
            if phase is None:
                continue
            what, since, allowance = phase
            waited = time.monotonic() - since
            if waited > allowance:
                self._fire(what, waited, allowance)

    def _fire(self, what: str, waited: float, allowance: float) -> None:
        message = (
            f"[rank {self._rank}] hang watchdog: {what} at step {self._step} has taken "
            f"{waited:.1f}s, more than its {allowance:g}s allowance; exiting with code "
            f"{self.exit_code} so the launcher can restart the job. Stacks of this process:\n"
        )
        try:
            sys.stderr.write(message)
            sys.stderr.flush()
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            sys.stdout.flush()
        except Exception:  # the exit below must happen whatever the streams are
            pass
        finally:
            os._exit(self.exit_code)

    # -- events -----------------------------------------------------------------------------
    def fit_start(self, state: State, logger: Logger) -> None:
        self._rank, self._step, self._first = state.rank, state.timestamp.batch + 1, True
        self._stop.clear()
        self._fit_thread, self._fit_frame = threading.get_ident(), _caller_named("fit")
        self._watch("the time before the first step", self.between_timeout)
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="hang-watchdog", daemon=True)
            self._thread.start()

    def batch_start(self, state: State, logger: Logger) -> None:
        self._step = state.timestamp.batch + 1
        allowance = self.timeout
        if self._first and self.first_step_timeout is not None:
            allowance = self.first_step_timeout
        self._first = False
        self._watch("the training step", allowance)

    def batch_end(self, state: State, logger: Logger) -> None:
        self._watch("the time between steps (data, logging, checkpoint)", self.between_timeout)

    def eval_start(self, state: State, logger: Logger) -> None:
        self._watch("evaluation", self.eval_timeout)

    def eval_end(self, state: State, logger: Logger) -> None:
        self._watch("the time between steps (data, logging, checkpoint)", self.between_timeout)

    def fit_end(self, state: State, logger: Logger) -> None:
        self._watch("", None)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._fit_frame = None


def _caller_named(name: str) -> Any:
    """The nearest frame up the current stack running a function called `name`, or None."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_name != name:
        frame = frame.f_back
    return frame
