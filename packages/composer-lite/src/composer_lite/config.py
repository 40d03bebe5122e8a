"""`TrainerConfig` (also `Trainer.Config`): every setting of a run, typed, checked before any work.

Build it with keywords, or from a dict with `TrainerConfig.from_dict` (foundry's YAML), which
names every unknown key at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from composer_lite._keys import reject_unknown_keys
from composer_lite.precision import PRECISIONS
from composer_lite.time import Time, TimeUnit

__all__ = ["GuardConfig", "TrainerConfig"]


@dataclass(kw_only=True)
class GuardConfig:
    """What to do when a step goes wrong (see composer_lite.callbacks.guards).

    on_nonfinite: 'skip' | 'rollback' | 'stop' for a NaN/inf loss or gradient.
    spike_factor: a loss above this times its running mean is a spike (None: no spike check).
    spike_window: batches in the running mean; spikes are only judged once it is full.
    on_spike:     'skip' | 'rollback' | 'stop'.
    """

    on_nonfinite: str = "stop"
    spike_factor: float | None = None
    spike_window: int = 100
    on_spike: str = "skip"

    def __post_init__(self) -> None:
        problems = guard_problems(self)
        if problems:
            raise ValueError(f"bad guard settings: {', '.join(problems)}; policies are {POLICIES}")


POLICIES = ("skip", "rollback", "stop")


def guard_problems(config: GuardConfig) -> list[str]:
    """What is wrong with a guard's settings, each naming its value (empty when all is well)."""
    bad = [
        f"{name}={getattr(config, name)!r}"
        for name in ("on_nonfinite", "on_spike")
        if getattr(config, name) not in POLICIES
    ]
    if config.spike_factor is not None and not config.spike_factor > 1.0:
        bad.append(f"spike_factor={config.spike_factor!r} (expected a number > 1, or None)")
    if not (isinstance(config.spike_window, int) and config.spike_window >= 1):
        bad.append(f"spike_window={config.spike_window!r} (expected a positive int)")
    return bad


@dataclass(kw_only=True)
class TrainerConfig:
    """Settings of a run. Times are strings like '1ep', '1000ba', '4096sp', '2e9tok', '0.1dur' (or
    `Time`s); a bare number is refused: composer counts it in epochs, so its unit would be a guess.

    max_duration:                 how long to train (required).
    scheduler:                    a `Schedule` (warmup as a Time), a torch LR scheduler, or None.
    eval_interval, eval_subset_num_batches: when to evaluate, and on how many batches (None: all).
    device_train_microbatch_size: rows per forward/backward: an int dividing the batch, 'auto'
                                  (halve on out-of-memory, all ranks agreeing), or None (whole).
    precision:                    'fp32', 'amp_bf16' or 'amp_fp16' (with a gradient scaler).
    parallelism:                  a `ParallelConfig` (FSDP2, hybrid sharding, activation
                                  checkpointing, compile); None: plain data parallel.
    save_folder, save_interval, save_num_checkpoints_to_keep (-1: all), save_storage_options.
    save_overwrite:               let a new run save into a save_folder that holds checkpoints
                                  (refused otherwise; composer's name): checkpoints of the same
                                  name are replaced, and retention counts the older ones too.
    load_path:                    a checkpoint to start from; autoresume: continue from the newest
                                  checkpoint in save_folder that loads, if there is one.
    seed, deterministic:          RNG seed, an int (each rank derives its own), and deterministic
                                  kernels.
    device:                       'cpu', 'cuda' or None (cuda:LOCAL_RANK when available).
    run_name, log_interval:       naming and how often metrics are logged.
    guard:                        a `GuardConfig` (non-finite and loss-spike policy).
    dist_timeout:                 seconds before a hung collective fails the job.
    hang_timeout:                 seconds a step may take before the job exits (None: no watchdog).
    handle_signals:               on SIGTERM/SIGINT, finish the batch, save, stop cleanly.
    default_callbacks:            add the speed and LR monitors and the progress bar.
    """

    max_duration: Time | str | int
    scheduler: Any = None
    eval_interval: Time | str | int = "1ep"
    eval_subset_num_batches: int | None = None
    device_train_microbatch_size: int | str | None = None
    precision: str = "fp32"
    parallelism: Any = None
    save_folder: str | None = None
    save_interval: Time | str | int = "1ep"
    save_num_checkpoints_to_keep: int = -1
    save_storage_options: dict[str, Any] = field(default_factory=dict)
    save_overwrite: bool = False
    load_path: str | None = None
    autoresume: bool = False
    seed: int = 17
    deterministic: bool = False
    device: str | None = None
    run_name: str | None = None
    log_interval: Time | str | int = "1ba"
    guard: GuardConfig = field(default_factory=GuardConfig)
    dist_timeout: float = 600.0
    hang_timeout: float | None = None
    handle_signals: bool = True
    default_callbacks: bool = True

    def __post_init__(self) -> None:
        for name in ("max_duration", "eval_interval", "save_interval", "log_interval"):
            setattr(self, name, _time_setting(name, getattr(self, name)))
        if self.max_duration.unit is TimeUnit.DURATION:
            raise ValueError(
                f"max_duration {self.max_duration} cannot be in 'dur' (a fraction of itself)"
            )
        _check_eval_interval(self.eval_interval, self.max_duration)
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"seed={seed!r}: expected an int from 0 to 2**63 - 1 (e.g. 17)")
        if self.device == "gpu":
            raise ValueError("device='gpu' is composer's name; composer-lite says 'cuda'")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"unknown precision {self.precision!r}; choose from {sorted(PRECISIONS)}"
            )
        mb = self.device_train_microbatch_size
        if not (
            mb is None
            or mb == "auto"
            or (isinstance(mb, int) and not isinstance(mb, bool) and mb > 0)
        ):
            raise ValueError(
                f"device_train_microbatch_size must be a positive int, 'auto' or None; got {mb!r}"
            )
        self.scheduler = _coerce_scheduler(self.scheduler)
        if isinstance(self.guard, dict):
            reject_unknown_keys(GuardConfig, self.guard, "guard")
            self.guard = GuardConfig(**self.guard)
        if isinstance(self.parallelism, dict):
            from composer_lite.parallel import ParallelConfig

            self.parallelism = ParallelConfig.from_dict(self.parallelism)
        if self.autoresume and not self.save_folder:
            raise ValueError("autoresume=True needs a save_folder to find checkpoints in")

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> TrainerConfig:
        """A config from a mapping; every unknown key is named in one error."""
        reject_unknown_keys(cls, options, "Trainer.Config", hints=COMPOSER_NAMES)
        if "max_duration" not in options:
            raise ValueError("Trainer.Config needs max_duration (e.g. '1ep' or '1000ba')")
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        """The resolved settings, as logged once at the start of a run."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Time):
                value = str(value)
            elif dataclasses.is_dataclass(value) and not isinstance(value, type):
                value = {
                    k: str(v) if isinstance(v, Time) else v
                    for k, v in dataclasses.asdict(value).items()
                }
            elif value is not None and not isinstance(value, (str, int, float, bool, dict, list)):
                value = repr(value)
            out[f.name] = value
        return out


# Keyword arguments of composer's Trainer that composer-lite spells otherwise (or does not have),
# named in the error about unknown keys with what to use instead.
COMPOSER_NAMES = {
    "optimizers": "optimizer (one optimizer: the third argument)",
    "schedulers": "scheduler (one Schedule or torch LR scheduler)",
    "deterministic_mode": "deterministic",
    "fsdp_config": "parallelism (a ParallelConfig)",
    "parallelism_config": "parallelism (a ParallelConfig)",
    "compile_config": "parallelism (ParallelConfig(compile=True))",
    "grad_accum": "device_train_microbatch_size",
    "console_log_interval": "log_interval",
    "progress_bar": "default_callbacks (the progress bar is one of them)",
    "grad_clip_norm": "callbacks=[GradClip(max_norm)] (composer_lite.callbacks)",
    "load_object_store": "save_storage_options (endpoint and credentials of an s3:// path)",
    "save_object_store": "save_storage_options (endpoint and credentials of an s3:// path)",
    "step_schedulers_every_batch": "nothing: schedules always step every batch",
    "save_filename": "nothing: checkpoints are folders named ep<epoch>-ba<batch>",
}


def _time_setting(name: str, value: Any) -> Time:
    """A time setting as a `Time`; a bare number is refused with the unit strings to use."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        count = f"{value:.0f}" if float(value).is_integer() else "<n>"  # counts are whole
        units = ", ".join(f"'{count}{u.value}'" for u in TimeUnit if u is not TimeUnit.DURATION)
        raise ValueError(
            f"{name}={value!r} has no unit (composer counts a bare number in epochs, other "
            f"tools in batches): give a string with its unit, one of {units}"
            + ("" if name == "max_duration" else ", or a fraction of the run like '0.25dur'")
        )
    return Time.coerce(value, TimeUnit.BATCH)


def _check_eval_interval(interval: Time, max_duration: Time) -> None:
    """Refuse an eval_interval that cannot come round within the run (it would mean "only at the
    end" without saying so); '1dur' says it on purpose."""
    if interval.unit is TimeUnit.DURATION:
        longer = interval.value > 1
    else:
        longer = interval.unit is max_duration.unit and interval.value > max_duration.value
    if longer:
        raise ValueError(
            f"eval_interval {interval} is longer than the whole run (max_duration "
            f"{max_duration}): it would never come round, and the model would be evaluated only "
            "at the end; say eval_interval='1dur' for that, or give an interval within the run"
        )


def _coerce_scheduler(scheduler: Any) -> Any:
    """A `Schedule` from a mapping (as YAML gives it); anything else must step like a torch LR
    scheduler and checkpoint (`step`, `state_dict`, `load_state_dict`), or be None."""
    from composer_lite.schedulers import Schedule

    if isinstance(scheduler, dict):
        reject_unknown_keys(Schedule, scheduler, "scheduler")
        return Schedule(**scheduler)
    missing = [
        name
        for name in ("step", "state_dict", "load_state_dict")
        if not callable(getattr(scheduler, name, None))
    ]
    if scheduler is not None and not isinstance(scheduler, Schedule) and missing:
        raise ValueError(
            f"scheduler must be a Schedule, a mapping of its fields, a torch LR scheduler or None;"
            f" got {scheduler!r} (no {', '.join(missing)})"
        )
    return scheduler
