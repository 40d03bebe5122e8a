"""`foundry sweep`: train small MPTs over sizes and token budgets, fit the loss against compute,
and predict a larger run, as the MPT team chose its configurations from small runs.

    foundry sweep data.local=train-mds eval_data.local=val-mds tokenizer=tok out=sweep \
        'sizes=[{d_model:32},{d_model:64},{d_model:96}]' 'tokens=[1M,2M]' target.d_model=128

Each size trains for each token budget (one point), through `foundry train`'s own path
(`check_run`, `build_run`, the Trainer), in its own save folder `out/points/<name>/`, and is
scored by its held-out loss (`eval/loss` on `eval_data` at the end: not the training loss).
Compute is C = 6 N D (Kaplan et al. 2020), N the non-embedding parameters (the embedding is a
lookup, not 6 FLOPs per parameter per token, and Kaplan's laws are cleaner without it), D the
tokens trained. `foundry.scaling.fit_power_law` fits L(C) = E + A C^-alpha to every point (or
the compute-optimal frontier, `fit_on=frontier`) and predicts the target's loss at
C = 6 N_target D_target with its interval; `train_target=true` also trains the target to compare.

Order: every check first (sizes, budgets, the data and its rows, the tokenizer, the save
folders, records of other settings), then the points by increasing compute. A finished point is
one record in `out/sweep.jsonl` (`RECORD_FORMAT`); a rerun reads those back and trains only the
rest, an interrupted point going on from its newest checkpoint (`foundry train`'s autoresume).
Outputs: the table and the fit on stdout, `out/fit.json`, `out/sweep.png`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

from foundry.recipe import PrecisionChoice
from foundry.schema import (
    DataConfig,
    HardwareConfig,
    LogConfig,
    OptimizerConfig,
    SchedulerConfig,
    SourceConfig,
    TrainCommand,
    parse_count,
)
from foundry.sweep_results import (
    RESULTS_FILE,
    PointResult,
    SweepError,
    append_result,
    fit_points,
    plain_data,
    plot_sweep,
    read_results,
    report_text,
    settings_digest,
)
from foundry.validate import need, opt
from mpt.config import MPTConfig

__all__ = [
    "Point",
    "SizeConfig",
    "SweepCommand",
    "check_sweep",
    "plan_points",
    "point_command",
    "run_command",
    "train_point",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SizeConfig:
    """One model size of the sweep: the base model with this width (and depth, heads, lr)."""

    d_model: int = need("the model width")
    n_layers: int | None = opt(None, "blocks; null: the model's")
    n_heads: int | None = opt(None, "attention heads (must divide d_model); null: the model's")
    lr: float | None = opt(None, "peak learning rate of this size; null: the optimizer's")


@dataclass(frozen=True, kw_only=True)
class SweepCommand:
    """`foundry sweep`: points of sizes x token budgets, a fit of loss against compute, and the
    predicted loss of a larger run."""

    model: MPTConfig = need("the base model (model=<option>); each size sets its own shape")
    hardware: HardwareConfig = need("one process's hardware: cpu, 1xh100, ...")
    optimizer: OptimizerConfig = need("the optimizer of every point (optimizer=<option>)")
    scheduler: SchedulerConfig = need("the LR schedule of every point, over its own budget")
    data: SourceConfig = need("training data prepared by `foundry data prep` (data.local=...)")
    eval_data: SourceConfig = need("held-out data prepared alike: its loss is what is fitted")
    out: str = need("the sweep's local folder: points/, sweep.jsonl, fit.json, sweep.png")
    tokenizer: str | None = opt(None, "the data's tokenizer: checked against model.vocab_size")
    sizes: list[SizeConfig] = need("the sizes (3-5): [{d_model: 32}, {d_model: 64}, ...]")
    tokens: list[int | str] = need("the token budgets every size trains for: ['1M', '2M']")
    target: SizeConfig = need("the larger size whose loss is predicted")
    target_tokens: int | str | None = opt(None, "the target's budget; null: the largest budget")
    train_target: bool = opt(False, "also train the target and compare with the prediction")
    fit_on: Literal["all", "frontier"] = opt(
        "all", "all points, or only those no cheaper point beats (the compute-optimal frontier)"
    )
    level: float = opt(0.95, "coverage of the prediction interval")
    max_seq_len: int = opt(2048, "tokens per row of the data (default: model.max_seq_len)")
    global_train_batch_size: int = opt(32, "samples per optimizer step")
    eval_batches: int | None = opt(None, "eval batches per point; null: all of eval_data")
    save_interval: str = opt("1dur", "checkpoint within a point every ...; 1dur: at its end")
    seed: int = opt(17, "the seed of every point")
    precision: PrecisionChoice = opt("auto", "as foundry train")
    attn_impl: str = opt("auto", "as foundry train")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "as foundry train")
    console_every: int = opt(50, "print a point's metrics every N batches")
    plot: bool = opt(True, "draw out/sweep.png (needs matplotlib)")

    def __post_init__(self) -> None:
        if not 0 < self.level < 1:
            raise ValueError(f"level must be in (0, 1), got {self.level}")
        if self.global_train_batch_size < 1:
            raise ValueError(
                f"global_train_batch_size must be >= 1, got {self.global_train_batch_size}"
            )


@dataclass(frozen=True, kw_only=True)
class Point:
    """One run of the sweep: a model shape trained for `steps` batches (`tokens` tokens)."""

    name: str
    role: Literal["sweep", "target"]
    model: MPTConfig
    lr: float | None
    steps: int
    tokens: int

    @property
    def non_embedding_params(self) -> int:
        return self.model.num_params(include_embedding=False)

    @property
    def compute(self) -> float:
        return 6.0 * self.non_embedding_params * self.tokens


def _size_model(base: MPTConfig, size: SizeConfig, seq: int, *, key: str) -> MPTConfig:
    changes = {"d_model": size.d_model, "max_seq_len": max(seq, base.max_seq_len)}
    for name in ("n_layers", "n_heads"):
        if getattr(size, name) is not None:
            changes[name] = getattr(size, name)
    try:
        return base.replace(**changes)
    except ValueError as err:
        raise SweepError(f"{key}: {err} (size {dataclasses.asdict(size)})") from None


def _budget_steps(text: int | str, tokens_per_step: int, *, key: str) -> int:
    try:
        tokens = parse_count(text, key=key)
    except ValueError as err:
        raise SweepError(str(err)) from None
    steps = tokens // tokens_per_step
    if steps < 1:
        raise SweepError(
            f"{key}={text} is {tokens} tokens, less than one step of {tokens_per_step}"
            " (global_train_batch_size x max_seq_len): give a larger budget"
        )
    return steps


def _name(model: MPTConfig, tokens: int) -> str:
    return f"d{model.d_model}-l{model.n_layers}-h{model.n_heads}-{tokens}tok"


def plan_points(cfg: SweepCommand) -> tuple[list[Point], Point]:
    """The sweep's points (by increasing compute) and the target; `SweepError` for sizes or
    budgets that cannot make a fit: fewer than 3 distinct sizes, a shape the model refuses,
    a budget under one step, a target no larger than every size."""
    per_step = cfg.global_train_batch_size * cfg.max_seq_len
    models = [
        _size_model(cfg.model, s, cfg.max_seq_len, key=f"sizes[{i}]")
        for i, s in enumerate(cfg.sizes)
    ]
    shapes = {(m.d_model, m.n_layers, m.n_heads) for m in models}
    if len(shapes) < 3 or len(shapes) < len(models):
        raise SweepError(
            f"sizes: {len(models)} size(s) of which {len(shapes)} distinct; a fit of loss against"
            " compute needs at least 3 distinct sizes (each size once)"
        )
    steps = [_budget_steps(t, per_step, key=f"tokens[{i}]") for i, t in enumerate(cfg.tokens)]
    if not steps or len(set(steps)) < len(steps):
        raise SweepError(
            f"tokens: {list(cfg.tokens)} are {steps} steps of {per_step} tokens; give at least one"
            " budget, each a different number of steps"
        )
    if len(models) * len(steps) < 4:
        raise SweepError(
            f"sizes x tokens: {len(models)} x {len(steps)} = {len(models) * len(steps)} points; a"
            " fit of E, A and alpha with an uncertainty needs at least 4: add a budget or a size"
        )
    points = [
        Point(
            name=_name(m, n * per_step),
            role="sweep",
            model=m,
            lr=s.lr,
            steps=n,
            tokens=n * per_step,
        )
        for m, s in zip(models, cfg.sizes, strict=True)
        for n in steps
    ]
    model = _size_model(cfg.model, cfg.target, cfg.max_seq_len, key="target")
    largest = max(m.num_params(include_embedding=False) for m in models)
    if model.num_params(include_embedding=False) <= largest:
        raise SweepError(
            f"target: {model.num_params(include_embedding=False)} non-embedding parameters, not"
            f" more than the largest size's {largest}: the target is the larger run to predict"
        )
    n = max(steps)
    if cfg.target_tokens is not None:
        n = _budget_steps(cfg.target_tokens, per_step, key="target_tokens")
    target = Point(
        name=_name(model, n * per_step),
        role="target",
        model=model,
        lr=cfg.target.lr,
        steps=n,
        tokens=n * per_step,
    )
    return sorted(points, key=lambda p: p.compute), target


def point_command(cfg: SweepCommand, point: Point) -> TrainCommand:
    """The `foundry train` config of one point (its own save folder under out/points/)."""
    optimizer = cfg.optimizer
    if point.lr is not None:
        optimizer = dataclasses.replace(optimizer, lr=point.lr)
    return TrainCommand(
        model=point.model,
        hardware=cfg.hardware,
        data=DataConfig(sources={"main": cfg.data}, max_seq_len=cfg.max_seq_len),
        optimizer=optimizer,
        scheduler=cfg.scheduler,
        run_name=point.name,
        max_duration=f"{point.steps}ba",
        global_train_batch_size=cfg.global_train_batch_size,
        precision=cfg.precision,
        attn_impl=cfg.attn_impl,
        tokenizer=cfg.tokenizer,
        seed=cfg.seed,
        eval_data=cfg.eval_data,
        eval_interval="1dur",  # once, at the end: the point's final held-out loss
        eval_subset_num_batches=cfg.eval_batches,
        save_folder=os.path.join(cfg.out, "points", point.name),
        save_interval=cfg.save_interval,
        save_num_checkpoints_to_keep=1,
        log=LogConfig(console_every=cfg.console_every),
        device=cfg.device,
    )


def _placement(cfg: SweepCommand) -> Any:
    import torch

    from foundry.train import Placement

    kind = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return Placement(rank=0, world=1, device=torch.device(kind))


def _check_data(cfg: SweepCommand, largest_budget: int) -> None:
    """Both datasets exist and hold rows of max_seq_len tokens; a warning when the largest
    budget is more than the training data (points that repeat data bend the law)."""
    from foundry.data.format import tokens_of
    from foundry.data.loader import LoaderSettings, build_loader

    held = {}
    for what, source in (("data", cfg.data), ("eval_data", cfg.eval_data)):
        data = DataConfig(sources={what: source}, max_seq_len=cfg.max_seq_len, shuffle=False)
        dataset = build_loader(data, LoaderSettings(batch_size=1, shuffle=False, seed=0)).dataset
        length = len(tokens_of(dataset[0])) if dataset.num_samples else 0
        if length != cfg.max_seq_len:
            raise SweepError(
                f"{what}: its rows hold {length} tokens, but max_seq_len is {cfg.max_seq_len}:"
                f" set max_seq_len={length} (and model.max_seq_len >= {length}), or prepare the"
                f" data with max_seq_len={cfg.max_seq_len}"
            )
        held[what] = dataset.num_samples * cfg.max_seq_len
    if largest_budget > held["data"]:
        log.warning(
            "the largest budget (%d tokens) is more than the training data (%d): points repeat"
            " data, which bends the law (prepare more data for a clean sweep)",
            largest_budget,
            held["data"],
        )


def check_sweep(cfg: SweepCommand, runs: list[Point]) -> dict[str, PointResult]:
    """Everything that can be known wrong before training; returns the points already done."""
    from foundry.train import check_run
    from streaming.storage import is_remote

    if is_remote(cfg.out):
        raise SweepError(f"out={cfg.out}: a sweep's folder is local (its records and its plot)")
    if cfg.hardware.world_size != 1:
        raise SweepError(
            f"hardware has {cfg.hardware.world_size} ranks: foundry sweep trains each point in"
            " one process; pick one process's hardware (hardware=cpu, hardware=1xh100)"
        )
    if cfg.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SweepError(
                "plot=true needs matplotlib: pip install matplotlib, or plot=false"
            ) from None
    _check_data(cfg, max(p.tokens for p in runs))
    done = read_results(cfg.out)
    place = _placement(cfg)
    for point in runs:
        train = point_command(cfg, point)
        check_run(train, place, command="train")  # each point is a train run
        digest = settings_digest(train)
        if point.name in done and done[point.name].settings != digest:
            where = f"{os.path.join(cfg.out, RESULTS_FILE)} holds {point.name}"
        elif point.name not in done and _saved_digest(train) not in (None, digest):
            where = f"{train.save_folder} holds a run"  # unfinished: it would resume from there
        else:
            continue
        raise SweepError(
            f"{where} trained with other settings (optimizer, schedule, data, seed, ...): give"
            " another out folder for these settings, or remove that folder"
        )
    return done


def _saved_digest(train: TrainCommand) -> str | None:
    """The settings digest in the config a point's save folder holds (None: no config)."""
    from foundry.train import saved_config

    text = saved_config(train.save_folder)
    if text is None:
        return None
    first = text.splitlines()[0] if text else ""
    return first.rpartition("settings ")[2] if "settings " in first else ""


def train_point(cfg: SweepCommand, point: Point) -> PointResult:
    """Train (or finish, from its newest checkpoint) one point and score its held-out loss."""
    import yaml

    from foundry.train import build_run, save_config

    train = point_command(cfg, point)
    place = _placement(cfg)
    start = time.perf_counter()
    run = build_run(train, place)
    head = f"# foundry sweep point {point.name} settings {settings_digest(train)}\n"
    text = head + yaml.safe_dump(plain_data(train), sort_keys=False)
    save_config(train, text, place)
    run.trainer.fit()
    state = run.trainer.state
    return PointResult(
        name=point.name,
        role=point.role,
        d_model=point.model.d_model,
        n_layers=point.model.n_layers,
        n_heads=point.model.n_heads,
        params=point.model.num_params(),
        non_embedding_params=point.non_embedding_params,
        steps=point.steps,
        tokens=point.tokens,
        compute=point.compute,
        eval_loss=float(state.eval_metrics["eval/loss"]),
        train_loss=None if state.step is None else float(state.step.loss),
        seconds=round(time.perf_counter() - start, 3),
        settings=settings_digest(train),
    )


def run_command(cfg: SweepCommand, config_text: str) -> int:
    """`foundry sweep`: check, train what is not done, fit, print, plot, predict."""
    points, target = plan_points(cfg)
    runs = [*points, target] if cfg.train_target else points
    done = check_sweep(cfg, runs)
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "foundry_config.yaml"), "w") as f:
        f.write(config_text)
    results = []
    for index, point in enumerate(runs, start=1):
        if point.name in done:
            log.info(
                "point %d/%d %s: read back from %s", index, len(runs), point.name, RESULTS_FILE
            )
            results.append(done[point.name])
            continue
        log.info("point %d/%d %s: training %d steps", index, len(runs), point.name, point.steps)
        result = train_point(cfg, point)
        append_result(cfg.out, result)
        results.append(result)
    measured = results[-1] if cfg.train_target else None
    sweep = [r for r in results if r.role == "sweep"]
    summary = fit_points(sweep, target, fit_on=cfg.fit_on, level=cfg.level, measured=measured)
    with open(os.path.join(cfg.out, "fit.json"), "w") as f:
        json.dump(summary.to_dict(), f, indent=2)
    print(report_text(sweep, summary), flush=True)
    if cfg.plot:
        path = plot_sweep(sweep, summary, os.path.join(cfg.out, "sweep.png"))
        print(f"plot: {path}", flush=True)
    return 0
