"""Typed schemas of foundry's configs: the groups (`hardware/`, `optimizer/`, `scheduler/`,
`data/`; `model/` is `mpt.MPTConfig` itself) and each command's whole config.

Frozen, keyword-only dataclasses; `foundry.validate.build` makes them from a composed config and
reports every unknown or mistyped key at once. Each field's `help` metadata is what
`foundry <command> --help` prints beside it. Value checks live in `__post_init__`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Literal

from foundry.data.dedup import DedupConfig
from foundry.data.filters import FilterConfig
from foundry.launch import LaunchConfig
from foundry.recipe import CompileChoice, PrecisionChoice, master_weight_problem
from foundry.validate import need, opt
from mpt.config import MPTConfig

__all__ = [
    "AdamWConfig",
    "DataConfig",
    "DataMixCommand",
    "DataPrepCommand",
    "DecoupledAdamWConfig",
    "HardwareConfig",
    "LionConfig",
    "OptimizerConfig",
    "SchedulerConfig",
    "SourceConfig",
    "LogConfig",
    "ParallelismConfig",
    "RunSettings",
    "TokenizerTrainCommand",
    "TrainCommand",
    "TrainInputs",
    "parse_count",
    "run_settings",
]


_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMbBtT]?)\s*$")
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def parse_count(value: int | float | str, *, key: str) -> int:
    """A count such as 1000, "300B" or "1T" (powers of 1000)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    match = _COUNT.match(str(value))
    if not match:
        raise ValueError(f"{key}={value!r} is not a count; write e.g. 1000000, '300B' or '1T'")
    return int(float(match[1]) * _SCALE[match[2].lower()])


# ----------------------------------------------------------------------------- hardware/


@dataclass(frozen=True, kw_only=True)
class HardwareConfig:
    """A cluster: its GPUs, their memory and peak speed, the links between them, and the price."""

    gpu: str = need("GPU type (H100-SXM, H200, A100-40GB, A100-80GB) or 'cpu'")
    gpus_per_node: int = need("GPUs per node (processes per node on 'cpu')")
    nodes: int = need("number of nodes")
    gpu_memory_gb: float | None = need("memory per GPU in GB, as the vendor states it")
    peak_bf16_flops: float | None = need("dense bf16 peak FLOP/s per GPU (for MFU); null: unknown")
    intra_node_gb_per_s: float | None = need("GPU-to-GPU bandwidth in a node, GB/s per direction")
    inter_node_gb_per_s: float | None = need(
        "network bandwidth between nodes, GB/s per GPU per direction"
    )
    price_per_gpu_hour: float | None = need("USD per GPU-hour (see the YAML for its source)")

    def __post_init__(self) -> None:
        if self.gpus_per_node < 1 or self.nodes < 1:
            raise ValueError(
                f"gpus_per_node and nodes must be >= 1, got {self.gpus_per_node} and {self.nodes}"
            )

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.nodes


# ----------------------------------------------------------------------------- optimizer/


@dataclass(frozen=True, kw_only=True)
class AdamWConfig:
    """torch's AdamW: weight decay multiplied by the learning rate."""

    name: Literal["adamw"] = "adamw"
    lr: float = opt(6.0e-4, "peak learning rate")
    betas: tuple[float, float] = opt((0.9, 0.95), "Adam's beta1, beta2")
    eps: float = opt(1.0e-8, "Adam's epsilon")
    weight_decay: float = opt(0.0, "weight decay (scaled by lr)")


@dataclass(frozen=True, kw_only=True)
class DecoupledAdamWConfig:
    """Composer's DecoupledAdamW, llm-foundry's default for MPT: weight decay scaled by
    lr / initial lr (not by lr), so `weight_decay` is the per-step decay at the peak."""

    name: Literal["decoupled_adamw"] = "decoupled_adamw"
    lr: float = opt(6.0e-4, "peak learning rate")
    betas: tuple[float, float] = opt((0.9, 0.95), "Adam's beta1, beta2")
    eps: float = opt(1.0e-8, "Adam's epsilon")
    weight_decay: float = opt(0.0, "decoupled weight decay per step at the peak learning rate")


@dataclass(frozen=True, kw_only=True)
class LionConfig:
    """Lion (Chen et al. 2023): sign updates; wants a ~3-10x smaller lr and a larger decay."""

    name: Literal["lion"] = "lion"
    lr: float = opt(1.0e-4, "peak learning rate")
    betas: tuple[float, float] = opt((0.9, 0.99), "Lion's beta1 (update), beta2 (momentum)")
    weight_decay: float = opt(0.0, "decoupled weight decay")


OptimizerConfig = AdamWConfig | DecoupledAdamWConfig | LionConfig

# ----------------------------------------------------------------------------- scheduler/


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """An LR schedule of `composer_lite.schedulers` (same fields as its `Schedule`)."""

    name: Literal["cosine", "linear", "constant"] = opt("cosine", "schedule shape")
    warmup: str = opt("0ba", "linear warm-up length, a Time: '100ba', '0.01dur', '1000000tok'")
    alpha_f: float = opt(0.0, "final LR multiplier of the decay")
    t_max: str | None = opt(None, "schedule length (default: the run's duration)")


# ----------------------------------------------------------------------------- data/


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """One prepared MDS dataset in a mix (a `streaming.Stream`)."""

    remote: str | None = opt(None, "where the shards live (s3://... or a path); null: local only")
    local: str | None = opt(None, "the dataset folder, or the cache folder for remote")
    split: str | None = opt(None, "a sub-folder (train, val)")
    proportion: float | None = opt(None, "relative weight in the mix (all sources or none)")
    repeat: float | None = opt(None, "absolute weight: passes over the source per epoch")
    choose: int | None = opt(None, "absolute weight: samples per epoch")
    tokens: str | None = opt(None, "tokens in the source ('100.42B'), for the mix table")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """A data mix: named sources and their weights, read as `streaming.Stream`s."""

    sources: dict[str, SourceConfig] = need("the sources, {name: source}")
    root: str | None = opt(None, "folder or s3:// prefix that relative source paths are under")
    max_seq_len: int = opt(2048, "tokens per sample the sources were prepared with")
    cache_dir: str | None = opt(None, "cache for remote sources (default ~/.cache/streaming)")
    shuffle: bool = opt(True, "shuffle the samples")
    shuffle_seed: int = opt(17, "the shuffle's seed")
    epoch_size: str | None = opt(None, "samples per epoch, e.g. '1M' (default: the mix's size)")

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("data.sources is empty: name at least one source")
        if self.max_seq_len < 1:
            raise ValueError(f"data.max_seq_len must be >= 1, got {self.max_seq_len}")


# ----------------------------------------------------------------------------- commands


@dataclass(frozen=True, kw_only=True)
class DataPrepCommand:
    """`foundry data prep`: text/jsonl -> filtered, deduplicated, tokenized MDS shards."""

    inputs: list[str] = need("text/jsonl files or folders, local or s3://")
    include: list[str] | None = opt(
        None, "file-name patterns taken from folders (['*.py']); null: all"
    )
    out: str = need("output folder or s3:// prefix for the MDS dataset")
    tokenizer: str = need("tokenizer.json, or a folder holding one")
    max_seq_len: int = opt(2048, "tokens per sample (documents are concatenated with EOS)")
    eos_token: str | None = opt(None, "EOS between documents (default: the tokenizer's)")
    text_key: str = opt("text", "the text field of jsonl rows")
    text_unit: Literal["file", "line", "paragraph"] = opt("file", "a text file's documents")
    filters: FilterConfig = opt(FilterConfig, "quality filters (null thresholds: off)")
    dedup: DedupConfig = opt(DedupConfig, "exact and near-duplicate removal")
    compression: str | None = opt("zstd", "shard compression (zstd, gz, null...)")
    size_limit: str = opt("64mb", "raw shard size limit")
    unit_size: str = opt("16mb", "input bytes per work unit (the unit of parallel work and resume)")
    num_proc: int | None = opt(None, "worker processes (null: every CPU)")
    work_dir: str | None = opt(None, "resumable intermediate state (default: <out>.work)")
    overwrite: bool = opt(False, "replace an existing output (and any unfinished run's state)")
    progress: bool = opt(True, "progress bars on stderr")
    model: MPTConfig | None = opt(None, "a model to check against (vocabulary, max_seq_len)")

    def __post_init__(self) -> None:
        if self.max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {self.max_seq_len}")
        if self.num_proc is not None and self.num_proc < 1:
            raise ValueError(f"num_proc must be >= 1 (or null for every CPU), got {self.num_proc}")


@dataclass(frozen=True, kw_only=True)
class TokenizerTrainCommand:
    """`foundry tokenizer train`: a byte-level BPE with the special tokens chat formats need."""

    inputs: list[str] = need("text/jsonl files or folders, local or s3://")
    include: list[str] | None = opt(
        None, "file-name patterns taken from folders (['*.py']); null: all"
    )
    out: str = need("output folder for tokenizer.json and tokenizer_config.json")
    vocab_size: int = opt(8192, "tokens in the vocabulary, special tokens included")
    min_frequency: int = opt(2, "merges of pairs seen fewer times are not learnt")
    eos_token: str = opt("<|endoftext|>", "end of document (id 0)")
    pad_token: str | None = opt("<|pad|>", "padding (id 1); null: none")
    chat_tokens: list[str] = opt(["<|im_start|>", "<|im_end|>"], "ChatML's turn markers")
    text_key: str = opt("text", "the text field of jsonl rows")
    text_unit: Literal["file", "line", "paragraph"] = opt("file", "a text file's documents")
    max_documents: int | None = opt(None, "train on the first N documents only")
    overwrite: bool = opt(False, "replace an existing out folder")


@dataclass(frozen=True, kw_only=True)
class DataMixCommand:
    """`foundry data mix`: the table of a data mix for a token budget, as MPT-7B's data table."""

    data: DataConfig = need("the mix (pick one: data=<option>)")
    tokens: str = opt("1T", "the training budget in tokens ('1T', '300B')")
    check: bool = opt(False, "also build the Streams (local sources must exist)")


# ----------------------------------------------------------------------------- train


@dataclass(frozen=True, kw_only=True)
class ParallelismConfig:
    """How a run spreads the model over the ranks (composer_lite.ParallelConfig)."""

    fsdp: bool = opt(True, "shard with FSDP2 when there is more than one rank")
    sharding: Literal["full", "hybrid"] = opt("full", "full: over all ranks; hybrid: HSDP")
    shard_group_size: int | None = opt(None, "ranks per shard group (hybrid); null: per node")
    param_dtype: Literal["auto", "bf16", "fp16"] | None = opt(
        "auto",
        "FSDP2's compute dtype of the gathered parameters (fp32 shards, fp32 gradient reduction);"
        " auto: bf16 on GPUs (no bf16 copy of every weight kept for backward), none on CPUs",
    )
    activation_checkpointing: bool = opt(False, "recompute each block's activations in backward")
    compile: CompileChoice = opt(
        "auto", "torch.compile; auto: on GPUs (one GPU: the whole model; FSDP2: each block)"
    )


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    """Where the metrics go: the console always, a JSONL file and TensorBoard beside the run,
    and an MLflow run."""

    console_every: int = opt(10, "print the metrics every N batches (eval metrics always)")
    jsonl: bool = opt(True, "write metrics.jsonl in the save folder (or log_dir)")
    tensorboard: bool = opt(False, "write TensorBoard event files (needs the tensorboard package)")
    log_dir: str | None = opt(None, "where logs go; null: the save folder, if local")
    mlflow: bool = opt(False, "log to an MLflow run (needs composer-lite[mlflow])")
    mlflow_tracking_uri: str | None = opt(
        None, "MLflow store: http(s)://..., file:/path; null: MLFLOW_TRACKING_URI"
    )
    mlflow_experiment: str | None = opt(
        None, "MLflow experiment (made if new); null: MLFLOW_EXPERIMENT_NAME, else Default"
    )


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """How a training run goes, whatever it trains: the settings `foundry train` and `foundry
    finetune` share (the same keys, defaults and checks). A finetune runs as a `TrainCommand`
    that holds its own `RunSettings` unchanged (`foundry.finetune`), and a launch reads them
    (`foundry.launch.Job`)."""

    hardware: HardwareConfig = need("the machines (pick one: hardware=<option>)")
    optimizer: OptimizerConfig = need("the optimizer (pick one: optimizer=<option>)")
    scheduler: SchedulerConfig = need("the LR schedule (pick one: scheduler=<option>)")
    run_name: str | None = opt(None, "the run's name (default: the save folder's name, else 'run')")
    max_duration: str = need("how long to train: '1000ba', '2ep', '26Btok' ('B', 'M' allowed)")
    global_train_batch_size: int = opt(32, "samples per optimizer step, over all ranks")
    device_train_microbatch_size: int | Literal["auto"] | None = opt(
        None, "samples per forward/backward; 'auto' halves on OOM; null: the whole device batch"
    )
    precision: PrecisionChoice = opt(
        "auto",
        "auto: bf16_master on one GPU (bf16 weights, fp32 masters; Adam), amp_bf16 on several"
        " GPUs or with Lion, fp32 on CPUs (foundry.recipe)",
    )
    attn_impl: str = opt("auto", "attention backend; auto: triton on GPUs, sdpa on CPUs")
    seed: int = opt(17, "RNG seed (each rank derives its own)")
    eval_data: SourceConfig | None = opt(
        None, "held-out MDS data, prepared as the training data, for the eval loss; null: none"
    )
    icl_tasks: str | None = opt(
        None, "evalkit task YAML run at each evaluation, with the data's tokenizer"
    )
    icl_data_root: str | None = opt(None, "folder of the tasks' dataset_uri (default: the YAML's)")
    icl_limit: int | None = opt(None, "examples per ICL task (null: all)")
    eval_interval: str = opt("500ba", "evaluate every ... ('500ba', '1ep')")
    eval_subset_num_batches: int | None = opt(None, "eval batches per evaluation; null: all")
    save_folder: str | None = opt(None, "checkpoints go here (a path or s3://); null: no saving")
    save_interval: str = opt("1000ba", "save every ... ('1000ba', '1ep')")
    save_num_checkpoints_to_keep: int = opt(-1, "keep the newest N checkpoints; -1: all")
    save_overwrite: bool = opt(
        False, "start afresh in a save_folder that holds another run (no autoresume)"
    )
    autoresume: bool = opt(True, "continue from the newest checkpoint in save_folder, if any")
    grad_clip_norm: float | None = opt(1.0, "clip the gradient norm to this; null: no clipping")
    parallelism: ParallelismConfig = opt(ParallelismConfig, "FSDP2 and friends")
    log: LogConfig = opt(LogConfig, "console, JSONL and TensorBoard logging")
    num_workers: int = opt(0, "dataloader worker processes per rank")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto: cuda when there is a GPU")
    launch: LaunchConfig = opt(
        LaunchConfig, "how the run gets onto its hardware: here, torchrun here, or a written launch"
    )

    def __post_init__(self) -> None:
        if self.global_train_batch_size < 1:
            raise ValueError(
                f"global_train_batch_size must be >= 1, got {self.global_train_batch_size}"
            )
        if self.hardware.world_size > 1 and self.global_train_batch_size % self.hardware.world_size:
            raise ValueError(
                f"global_train_batch_size {self.global_train_batch_size} is not divisible by the"
                f" {self.hardware.world_size} ranks of hardware ({self.hardware.nodes} node(s) x"
                f" {self.hardware.gpus_per_node})"
            )
        problem = master_weight_problem(
            self.precision, world=self.hardware.world_size, optimizer=self.optimizer.name
        )
        if problem:
            raise ValueError(problem)


@dataclass(frozen=True, kw_only=True)
class TrainInputs:
    """What `foundry train` trains: a fresh model and its pretraining data."""

    model: MPTConfig = need("the model (pick one: model=<option>)")
    data: DataConfig = need("the training data mix (pick one: data=<option>)")
    tokenizer: str | None = opt(None, "the data's tokenizer: checked against the model's vocab")


# A dataclass orders the fields of its last base first: a command's inputs, then its run settings
# (in --help, in the list of a config's problems and in the saved config).
@dataclass(frozen=True, kw_only=True)
class TrainCommand(RunSettings, TrainInputs):
    """`foundry train`: pretrain an MPT on prepared MDS data with composer-lite's Trainer."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.icl_tasks is not None and self.tokenizer is None:
            raise ValueError("icl_tasks needs the tokenizer of the data: set tokenizer=...")
        if self.data.max_seq_len > self.model.max_seq_len and not self.model.alibi_extrapolate:
            raise ValueError(
                f"data.max_seq_len {self.data.max_seq_len} is longer than model.max_seq_len"
                f" {self.model.max_seq_len}: prepare the data with max_seq_len <="
                f" {self.model.max_seq_len}, or set model.max_seq_len={self.data.max_seq_len}"
            )


def run_settings(cfg: RunSettings) -> dict[str, Any]:
    """A command's `RunSettings` fields by name: the keywords that give another command the same
    run settings (`foundry.finetune`'s train form)."""
    return {f.name: getattr(cfg, f.name) for f in fields(RunSettings)}
