"""`foundry train`: pretrain an MPT on prepared MDS data with composer-lite's Trainer.

    foundry train model=mpt_tiny data.sources.main.local=mds max_duration=200ba save_folder=run
    foundry train model=mpt_1b hardware=8xh100 ...      # on an 8-GPU H100 box: starts torchrun
    foundry train model=mpt_30b hardware=512xh100 ...   # elsewhere: writes the Slurm launch

What it does, in order (every check before any long work):

0. `foundry.launch.choose_launch`: outside a job, start torchrun here when the hardware is this
   machine, or write the launch for the cluster (with the plan) and stop; otherwise go on.
1. `check_run`: the processes match the hardware (ranks, GPUs), the data exists and fits the
   model (sequence length, vocabulary), and a save folder that holds checkpoints holds this
   model's (its `foundry_config.yaml`), unless `save_overwrite`.
2. `build_run`: the MPT model behind `foundry.model.MPTTrainable` (attention backend for the
   machine), the optimizer and LR schedule, the streaming loaders (the global batch split over
   the ranks), the loggers, and `composer_lite.TrainerConfig` (FSDP2 through `ParallelConfig`
   when there is more than one rank; checkpoints and autoresume in `save_folder`).
3. The Trainer's `fit()`; then one summary of where everything went.

Under torchrun every rank runs this same code; the Trainer joins the process group.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

import torch

from foundry.data.loader import LoaderSettings, build_loader
from foundry.launch import (
    Job,
    JobCommand,
    choose_launch,
    run_local,
    this_machine,
    write_launch,
)
from foundry.model import MPTTrainable, choose_attention
from foundry.plan import plan_for_train, plan_picks_micro_batch
from foundry.recipe import resolve_compile, resolve_precision
from foundry.schema import DataConfig, RunSettings, TrainCommand, parse_count
from foundry.tokenizer import check_vocab_fits, load_tokenizer

__all__ = [
    "CONFIG_FILE",
    "Placement",
    "Run",
    "TrainError",
    "build_run",
    "check_row_length",
    "check_run",
    "check_schedule",
    "optimizer_classes",
    "placement",
    "run_command",
    "save_config",
    "saved_config",
    "to_time",
]

log = logging.getLogger(__name__)

CONFIG_FILE = "foundry_config.yaml"  # the resolved config, beside the checkpoints


class TrainError(ValueError):
    """A training run that cannot start as configured; the message says what to change."""


def optimizer_classes() -> dict[str, type[torch.optim.Optimizer]]:
    """The optimizer group's names and their classes."""
    from composer_lite import DecoupledAdamW, DecoupledLionW

    return {"adamw": torch.optim.AdamW, "decoupled_adamw": DecoupledAdamW, "lion": DecoupledLionW}


_SCALED_TIME = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMbBtT])\s*(tok|sp|ba)\s*$")


def to_time(value: str, *, key: str) -> str:
    """A composer-lite time string; '26Btok' and '1.5Msp' become plain counts ('26000000000tok')."""
    match = _SCALED_TIME.match(str(value))
    if match:
        return f"{parse_count(match[1] + match[2], key=key)}{match[3]}"
    return str(value)


@dataclass(frozen=True, kw_only=True)
class Placement:
    """Where this process runs: its rank among `world` processes and its device."""

    rank: int
    world: int
    device: torch.device


def placement(run: RunSettings) -> Placement:
    """This process's place in a run of `foundry train` or `foundry finetune`: its rank and the
    world from torchrun's RANK and WORLD_SIZE (0 of 1 outside a job), and the device `run.device`
    names (auto: cuda when there is a GPU), on CUDA the GPU of its LOCAL_RANK."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    kind = run.device if run.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        return Placement(
            rank=rank,
            world=world,
            device=torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))),
        )
    return Placement(rank=rank, world=world, device=torch.device("cpu"))


def saved_config(save_folder: str) -> str | None:
    """The text of `foundry_config.yaml` in a save folder (local or remote), or None."""
    from streaming.storage import join_url, object_exists, read_bytes

    url = join_url(save_folder, CONFIG_FILE)
    return read_bytes(url).decode() if object_exists(url) else None


def _model_shape_differences(saved_text: str, cfg: TrainCommand) -> list[str]:
    """The model fields (those that shape the weights) where a saved config differs from `cfg`."""
    import yaml

    from mpt import MPTConfig

    saved = MPTConfig.from_dict((yaml.safe_load(saved_text) or {}).get("model") or {}).to_dict()
    ours = cfg.model.to_dict()
    return [
        f"model.{k}: {saved[k]!r} there, {ours[k]!r} here" for k in _SHAPE if saved[k] != ours[k]
    ]


# The MPTConfig fields that decide the weights' shapes and names (a checkpoint loads only into a
# model that agrees on all of them).
_SHAPE = (
    "d_model",
    "n_heads",
    "n_layers",
    "expansion_ratio",
    "vocab_size",
    "kv_n_heads",
    "no_bias",
    "norm_type",
    "learned_pos_emb",
    "tie_word_embeddings",
    "qk_ln",
)


def _check_world(
    cfg: TrainCommand, place: Placement, env: dict[str, str], command: JobCommand
) -> None:
    """The processes are the hardware's: ranks, ranks per node, GPUs, the hybrid shard groups
    (`command`: the `foundry` command these processes run, which the messages name)."""
    hw, parallel = cfg.hardware, cfg.parallelism
    if place.world != hw.world_size:
        raise TrainError(
            f"hardware has {hw.world_size} rank(s) ({hw.nodes} node(s) x {hw.gpus_per_node}), but"
            f" this process is one of {place.world}: launch with torchrun --nnodes={hw.nodes}"
            f" --nproc-per-node={hw.gpus_per_node} -m foundry {command} ..., or let foundry"
            " launch it (launch.launcher=auto), or pick the hardware of this machine"
            " (hardware=cpu, ...)"
        )
    per_node = env.get("LOCAL_WORLD_SIZE")  # torchrun's --nproc-per-node
    if per_node is not None and int(per_node) != hw.gpus_per_node:
        raise TrainError(
            f"hardware has {hw.gpus_per_node} process(es) per node, but torchrun started"
            f" {per_node} on this one: launch with --nnodes={hw.nodes}"
            f" --nproc-per-node={hw.gpus_per_node} (shard groups and data follow the nodes)"
        )
    if hw.gpu != "cpu" and place.device.type != "cuda":
        raise TrainError(
            f"hardware names {hw.gpu} GPUs but this machine has no CUDA device: pick hardware=cpu"
            " to train here, or run on the machines the hardware describes"
        )
    group = parallel.shard_group_size or hw.gpus_per_node  # hybrid: a node, by default
    if parallel.sharding == "hybrid" and place.world % group:
        raise TrainError(
            f"parallelism.sharding=hybrid shards within groups of {group} rank(s)"
            f" (parallelism.shard_group_size), which does not divide the {place.world} ranks:"
            f" pick a divisor of {place.world} (null: a node, {hw.gpus_per_node})"
        )


def check_schedule(cfg: RunSettings, *, max_seq_len: int | None) -> None:
    """The run's times read as times, and the LR warmup fits in the schedule where both count in
    batches, samples or tokens (epochs and fractions wait for the data's length; tokens wait for
    `max_seq_len`, the rows' length, when it is not known yet: a finetune's window before its
    checkpoint is read): a `TrainError` before anything is launched, so that torchrun does not
    restart a run that cannot start."""
    from composer_lite import Time, Timestamp, TimeUnit

    s = cfg.scheduler
    given = {"max_duration": cfg.max_duration, "scheduler.warmup": s.warmup}
    given |= {"eval_interval": cfg.eval_interval, "save_interval": cfg.save_interval}
    if s.t_max is not None:
        given["scheduler.t_max"] = s.t_max
    times = {}
    for key, value in given.items():
        try:
            times[key] = Time.coerce(to_time(value, key=key))
        except ValueError as err:
            raise TrainError(f"{key}={value!r}: {err}") from err
    warmup, total = times["scheduler.warmup"], times.get("scheduler.t_max", times["max_duration"])
    units = {warmup.unit, total.unit}
    if units & {TimeUnit.EPOCH, TimeUnit.DURATION}:
        return
    if max_seq_len is None and TimeUnit.TOKEN in units:
        return
    tokens = None if max_seq_len is None else cfg.global_train_batch_size * max_seq_len
    steps = [
        Timestamp().to_steps(t, total, None, cfg.global_train_batch_size, tokens)
        for t in (warmup, total)
    ]
    if steps[0] > steps[1]:
        length = "scheduler.t_max" if s.t_max is not None else "max_duration"
        raise TrainError(
            f"scheduler.warmup {s.warmup} ({steps[0]} steps) is longer than the schedule"
            f" ({length} {given[length]}: {steps[1]} steps of {cfg.global_train_batch_size}"
            f" sequences): shorten scheduler.warmup or lengthen {length}"
        )


def check_run(cfg: TrainCommand, place: Placement, *, command: JobCommand) -> None:
    """Everything that can be known wrong before any long work, each a `TrainError`; `command`:
    the `foundry` command this process runs (a finetune is checked in its train form), named
    where the message says how to launch it."""
    check_schedule(cfg, max_seq_len=cfg.data.max_seq_len)
    _check_world(cfg, place, dict(os.environ), command)
    if cfg.tokenizer is not None:
        check_vocab_fits(load_tokenizer(cfg.tokenizer), cfg.model.vocab_size)
    if cfg.save_folder is None:
        return
    saved = saved_config(cfg.save_folder)
    if saved is not None and not cfg.save_overwrite:
        differences = _model_shape_differences(saved, cfg)
        if differences:
            raise TrainError(
                f"save_folder {cfg.save_folder} holds a run of another model shape ("
                + "; ".join(differences)
                + "): pick another save_folder, or save_overwrite=true to start afresh there"
            )


def check_row_length(dataset: Any, expected: int, *, what: str) -> None:
    """The first row of a dataset holds `expected` tokens (finetuning rows, which the collator
    pads: at most `expected`), or a `TrainError` says what to do."""
    from foundry.data.format import tokens_of

    if dataset.num_samples == 0:
        raise TrainError(f"{what}: the dataset holds no samples")
    row = dataset[0]
    finetuning = "input_ids" in row
    length = len(row["input_ids"]) if finetuning else len(tokens_of(row))
    if length > expected or (length != expected and not finetuning):
        raise TrainError(
            f"{what}: its rows hold {length} tokens, but {what}.max_seq_len is {expected}: set"
            f" {what}.max_seq_len={length} (and model.max_seq_len >= {length}), or prepare the"
            f" data with max_seq_len={expected}"
        )


def precision_of(cfg: TrainCommand, device: torch.device, world: int) -> str:
    """The run's precision on this device (`foundry.recipe`: auto is bf16_master on one GPU)."""
    return resolve_precision(
        cfg.precision, on_gpu=device.type == "cuda", world=world, optimizer=cfg.optimizer.name
    )


def param_dtype(cfg: TrainCommand, device_type: str) -> str | None:
    """FSDP2's parameter dtype: `parallelism.param_dtype`, where "auto" is bf16 on GPUs (the
    gathered weights in bf16, so autocast keeps no bf16 copy of every weight for backward; the
    fp32 shards take the update) and none on CPUs."""
    chosen = cfg.parallelism.param_dtype
    if chosen == "auto":
        return "bf16" if device_type == "cuda" else None
    return chosen


def _parallel_config(cfg: TrainCommand, device: torch.device) -> Any:
    from composer_lite import ParallelConfig

    p = cfg.parallelism
    return ParallelConfig(
        fsdp=p.fsdp,
        sharding=p.sharding,
        shard_group_size=p.shard_group_size,
        param_dtype=param_dtype(cfg, device.type),
        activation_checkpointing=p.activation_checkpointing,
        compile=resolve_compile(p.compile, on_gpu=device.type == "cuda"),
    )


def _schedule(cfg: TrainCommand) -> Any:
    from composer_lite import Schedule

    s = cfg.scheduler
    return Schedule(
        name=s.name,
        warmup=to_time(s.warmup, key="scheduler.warmup"),
        alpha_f=s.alpha_f,
        t_max=None if s.t_max is None else to_time(s.t_max, key="scheduler.t_max"),
        tokens_per_batch=cfg.global_train_batch_size * cfg.data.max_seq_len,
    )


def _optimizer(cfg: TrainCommand, model: torch.nn.Module, precision: str) -> torch.optim.Optimizer:
    """The optimizer group's optimizer; for bf16_master its AdamW with fp32 masters, where
    decoupled_adamw's weight decay (scaled by lr / initial lr) is AdamW's (scaled by lr) divided
    by the initial lr: the same decay at every step."""
    options = {k: v for k, v in vars(cfg.optimizer).items() if k != "name"}
    options["betas"] = tuple(options["betas"])
    if precision != "bf16_master":
        return optimizer_classes()[cfg.optimizer.name](model.parameters(), **options)
    from composer_lite import MasterWeightAdamW

    if cfg.optimizer.name == "decoupled_adamw" and options["lr"] > 0:
        options["weight_decay"] = options["weight_decay"] / options["lr"]
    return MasterWeightAdamW(model.parameters(), **options)


def _micro_batch(cfg: TrainCommand, per_rank: int, device: torch.device) -> int | str | None:
    """device_train_microbatch_size; null on a GPU: the whole device batch if the plan says it
    fits, else the plan's largest micro-batch that does (`foundry.plan`)."""
    if device.type != "cuda" or not plan_picks_micro_batch(cfg):
        return cfg.device_train_microbatch_size
    largest = plan_for_train(cfg).micro_batch
    if largest < per_rank:
        log.info(f"micro-batch {largest} (the largest the plan fits), {per_rank} per device step")
        return largest
    return None


def _log_dir(cfg: TrainCommand) -> str | None:
    from streaming.storage import is_remote

    if cfg.log.log_dir is not None:
        return cfg.log.log_dir
    if cfg.save_folder is not None and not is_remote(cfg.save_folder):
        return cfg.save_folder
    return None


def _loggers(cfg: TrainCommand, place: Placement) -> list[Any]:
    from composer_lite.loggers import ConsoleLogger, JSONLLogger, TensorBoardLogger

    # foundry prints the resolved config itself
    loggers: list[Any] = [ConsoleLogger(every=cfg.log.console_every, show_config=False)]
    folder = _log_dir(cfg)
    if folder is not None and place.rank == 0:
        os.makedirs(folder, exist_ok=True)
        if cfg.log.jsonl:
            loggers.append(JSONLLogger(os.path.join(folder, "metrics.jsonl")))
        if cfg.log.tensorboard:
            loggers.append(TensorBoardLogger(os.path.join(folder, "tensorboard")))
    if cfg.log.mlflow and place.rank == 0:
        loggers.append(_mlflow_logger(cfg, folder))
    return loggers


def _mlflow_logger(cfg: TrainCommand, folder: str | None) -> Any:
    """An MLflow run named as the run; the metrics file and the resolved config go with it."""
    from composer_lite.loggers import MLFlowLogger
    from streaming.storage import is_remote

    files = [os.path.join(folder, "metrics.jsonl")] if folder and cfg.log.jsonl else []
    if cfg.save_folder is not None and not is_remote(cfg.save_folder):
        files.append(os.path.join(cfg.save_folder, CONFIG_FILE))
    return MLFlowLogger(
        tracking_uri=cfg.log.mlflow_tracking_uri,
        experiment_name=cfg.log.mlflow_experiment,
        run_name=cfg.run_name or _default_run_name(cfg),
        artifacts=files,
        rank=0,
    )


def _eval_loader(cfg: TrainCommand, per_rank: int) -> Any:
    if cfg.eval_data is None:
        return None
    data = DataConfig(
        sources={"eval": cfg.eval_data},
        root=cfg.data.root,
        max_seq_len=cfg.data.max_seq_len,
        cache_dir=cfg.data.cache_dir,
        shuffle=False,
    )
    loader = build_loader(
        data, LoaderSettings(batch_size=per_rank, shuffle=False, seed=0, drop_last=False)
    )
    check_row_length(loader.dataset, cfg.data.max_seq_len, what="eval_data")
    return loader


def _icl_evaluators(cfg: TrainCommand) -> list[Any]:
    """evalkit's ICL tasks at each evaluation point, when `icl_tasks` names a task YAML."""
    if cfg.icl_tasks is None:
        return []
    from evalkit import EvalConfig, Evaluator
    from evalkit.training import InTrainingEvaluator

    evaluator = Evaluator(
        load_tokenizer(cfg.tokenizer),
        cfg.icl_tasks,
        data_root=cfg.icl_data_root,
        config=EvalConfig(limit=cfg.icl_limit, max_seq_len=cfg.model.max_seq_len),
    )
    return [InTrainingEvaluator(evaluator, causal_lm=lambda trained: trained.causal_lm())]


@dataclass(frozen=True, kw_only=True)
class Run:
    """A built run: the Trainer, and what the summary reports."""

    trainer: Any
    placement: Placement
    attn_impl: str


def build_run(
    cfg: TrainCommand,
    place: Placement,
    *,
    callbacks: list[Any] = (),
    model: MPTTrainable | None = None,
) -> Run:
    """The Trainer of this run (model, optimizer, schedule, loaders, loggers, checkpoints); the
    FSDP2 mesh it sharded the model over is logged.
    `model`: start from these weights (`foundry finetune`; config `cfg.model`, on the device
    where this function would build it) instead of a freshly initialised `cfg.model`."""
    from composer_lite import Trainer, TrainerConfig
    from composer_lite.callbacks import GradClip, MemoryMonitor
    from mpt import MPTForCausalLM

    per_rank = cfg.global_train_batch_size // place.world
    if model is None:
        model_config = choose_attention(cfg.model, place.device, asked=cfg.attn_impl)
        torch.manual_seed(cfg.seed)  # every rank builds the same weights before any sharding
        build_on = place.device if place.world == 1 else torch.device("cpu")
        model = MPTTrainable(MPTForCausalLM(model_config, device=build_on))
    model_config = model.config
    precision = precision_of(cfg, place.device, place.world)
    if precision == "bf16_master":  # the optimizer keeps the fp32 masters
        model = model.to(torch.bfloat16)
    if place.world == 1 and resolve_compile(
        cfg.parallelism.compile, on_gpu=place.device.type == "cuda"
    ):
        model.model.compile()  # the whole model (FSDP2 compiles each block: ParallelConfig)
    loader = build_loader(
        cfg.data,
        LoaderSettings(
            batch_size=per_rank,
            shuffle=cfg.data.shuffle,
            seed=cfg.data.shuffle_seed,
            num_workers=cfg.num_workers,
        ),
    )
    check_row_length(loader.dataset, cfg.data.max_seq_len, what="data")
    config = TrainerConfig(
        max_duration=to_time(cfg.max_duration, key="max_duration"),
        scheduler=_schedule(cfg),
        # without eval data nothing is evaluated, and the interval is not held against the run
        eval_interval=(
            to_time(cfg.eval_interval, key="eval_interval")
            if cfg.eval_data or cfg.icl_tasks
            else "1dur"
        ),
        eval_subset_num_batches=cfg.eval_subset_num_batches,
        device_train_microbatch_size=_micro_batch(cfg, per_rank, place.device),
        # bf16_master: bf16 weights, no autocast
        precision="fp32" if precision == "bf16_master" else precision,
        parallelism=_parallel_config(cfg, place.device) if place.world > 1 else None,
        save_folder=cfg.save_folder,
        save_interval=to_time(cfg.save_interval, key="save_interval"),
        save_num_checkpoints_to_keep=cfg.save_num_checkpoints_to_keep,
        save_overwrite=cfg.save_overwrite,
        # save_overwrite starts afresh: resuming the run it replaces would contradict it
        autoresume=cfg.autoresume and cfg.save_folder is not None and not cfg.save_overwrite,
        seed=cfg.seed,
        device=place.device.type,
        run_name=cfg.run_name or _default_run_name(cfg),
    )
    extra = [GradClip(cfg.grad_clip_norm)] if cfg.grad_clip_norm is not None else []
    if place.device.type == "cuda":  # memory/peak_allocated ... as often as the console
        extra.append(MemoryMonitor(interval=cfg.log.console_every))
    trainer = Trainer(
        model,
        loader,
        _optimizer(cfg, model, precision),
        eval_dataloader=_eval_loader(cfg, per_rank),
        evaluators=_icl_evaluators(cfg),
        callbacks=[*extra, *callbacks],
        loggers=_loggers(cfg, place),
        config=config,
    )
    mesh = _mesh_line(trainer.state.model)
    if mesh is not None:  # hybrid: ('replicate', 'shard') = (nodes, ranks per node)
        log.info(mesh)
    return Run(trainer=trainer, placement=place, attn_impl=model_config.attn_impl)


def _default_run_name(cfg: TrainCommand) -> str:
    if cfg.save_folder:
        return os.path.basename(cfg.save_folder.rstrip("/")) or "run"
    return "run"


def save_config(cfg: TrainCommand, config_text: str, place: Placement) -> None:
    """Rank 0 writes the resolved config beside the checkpoints (atomically; remote: uploaded)."""
    if cfg.save_folder is None or place.rank != 0:
        return
    from streaming.storage import is_remote, join_url, upload_bytes, write_bytes_atomic

    if is_remote(cfg.save_folder):
        upload_bytes(config_text.encode(), join_url(cfg.save_folder, CONFIG_FILE))
    else:
        os.makedirs(cfg.save_folder, exist_ok=True)
        write_bytes_atomic(os.path.join(cfg.save_folder, CONFIG_FILE), config_text.encode())


def _summary(run: Run, cfg: TrainCommand) -> str:
    headline = f"trained to batch {run.trainer.state.timestamp.batch} ({run.attn_impl} attention)"
    return "\n".join([headline, *outcome_lines(run, cfg)])


def outcome_lines(run: Run, cfg: TrainCommand) -> list[str]:
    """What a finished train or finetune prints under its headline: the last step's loss, the
    eval metrics, the newest checkpoint and where the metrics were logged."""
    state = run.trainer.state
    lines = [f"last step loss: {state.step.loss:.4f}"] if state.step is not None else []
    lines += [f"{name}: {value:.4f}" for name, value in sorted(state.eval_metrics.items())]
    latest = run.trainer.checkpoints.latest() if run.trainer.checkpoints is not None else None
    if latest:
        lines.append(f"checkpoint: {latest}")
    folder = _log_dir(cfg)
    if folder and cfg.log.jsonl:
        lines.append(f"metrics: {os.path.join(folder, 'metrics.jsonl')}")
    return lines


def _mesh_line(model: torch.nn.Module) -> str | None:
    """The FSDP2 mesh the model's parameters were sharded over (None: not sharded)."""
    from torch.distributed.tensor import DTensor

    for param in model.parameters():
        if isinstance(param, DTensor):
            mesh = param.device_mesh
            return f"FSDP2 mesh {mesh.mesh_dim_names} {tuple(mesh.shape)}"
    return None


def run_command(cfg: TrainCommand, config_text: str) -> int:
    """`foundry train`: first where it runs (`foundry.launch`, before any model is built: torchrun
    started here, or the launch written for the cluster, with the plan); in this process: check,
    print the plan, build, train, summarize (rank 0 prints)."""
    # a run that cannot start is not launched (nor restarted by torchrun)
    check_schedule(cfg, max_seq_len=cfg.data.max_seq_len)
    where = choose_launch(cfg.launch, cfg.hardware, env=os.environ, machine=this_machine)
    if where == "local":
        return run_local(Job.of("train", cfg, config_text))  # its rank 0 prints the plan
    if where == "write":
        return write_launch(Job.of("train", cfg, config_text), plan=plan_for_train(cfg).render())
    place = placement(cfg)
    check_run(cfg, place, command="train")
    if place.rank == 0:
        print(plan_for_train(cfg).render(), flush=True)
    run = build_run(cfg, place)  # the Trainer has resumed, or refused a folder of another run
    save_config(cfg, config_text, place)
    run.trainer.fit()
    if place.rank == 0:
        print(_summary(run, cfg), file=sys.stdout, flush=True)
    return 0
