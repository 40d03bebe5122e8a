"""`foundry finetune`: continue a pretrained MPT on finetuning MDS data (`foundry data finetune`).

    foundry finetune load_path=runs/tiny data.sources.main.local=sft-mds max_duration=200ba
    foundry finetune hardware=8xh100 load_path=hf/mpt-7b ...  # on an 8-GPU box: starts torchrun
    foundry finetune hardware=512xh100 load_path=...          # elsewhere: writes the launch

The loss covers the response tokens only (the data's labels are -100 elsewhere; packed rows keep
attention and loss inside each example through `sequence_id`). The run settings (hardware,
batch, precision, checkpoints, `launch.*`, ...) are `foundry train`'s (`schema.RunSettings`). In
order, every check before the weights are read:

0. Where it runs, as `foundry train` (`foundry.launch.choose_launch`, after its times are
   checked): outside a job, torchrun started here when the hardware is this machine (after the
   checks of step 1, in this process: a finetune that cannot start starts no ranks), or the
   launch for the cluster written (`python -m foundry finetune` with this run's overrides; its
   paths are the cluster's, checked by its ranks) and exit 1; otherwise on. A cluster finetune
   that lacks only `max_duration` or `data.` keys gets a draft launch and exit 2, as `foundry
   train` (`foundry.launch_draft`).
1. `plan_finetune`: the checkpoint's config (`foundry.finetune_model.read_start`: ours or a
   Hugging Face MPT directory), the data (it exists; its rows fit the window), the tokenizer
   (`tokenizer=`, else the one `foundry data finetune` saved beside the data, else the
   checkpoint's), and the model to finetune: the checkpoint's, or `model=` when given (same
   shape, or an error naming every differing field), at `max_seq_len` (ALiBi runs longer
   windows than it was pretrained at) with the embedding grown when the tokenizer outgrew it;
   then the schedule again, its token times counted at that window.
2. The same checks and Trainer as `foundry train` (`foundry.train.check_run`, `build_run`):
   hardware and ranks, FSDP2 over several ranks, checkpoints every `save_interval`, autoresume
   from `save_folder`, a save folder of another model shape refused.
3. The weights loaded into the model (`load_start`), trained, summarized.

`save_folder` gets the run as `foundry train` writes it (`foundry_config.yaml` in the train form,
so `foundry.checkpoints.load_model` and `load_trained` read it), the tokenizer (`tokenizer/`),
and this command's own resolved config (`foundry_finetune.yaml`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from foundry.finetune_model import (
    FinetuneError,
    StartPoint,
    load_start,
    read_start,
    target_config,
)
from foundry.launch import Job, choose_launch, run_local, this_machine, write_launch
from foundry.schema import DataConfig, RunSettings, SourceConfig, TrainCommand, run_settings
from foundry.train import Placement, check_schedule, outcome_lines, placement
from foundry.validate import need, opt
from mpt.config import MPTConfig

__all__ = [
    "FINETUNE_CONFIG_FILE",
    "FinetuneCommand",
    "FinetuneData",
    "FinetunePlan",
    "finetune",
    "plan_finetune",
    "run_command",
]

log = logging.getLogger(__name__)

FINETUNE_CONFIG_FILE = "foundry_finetune.yaml"
TOKENIZER_DIR = "tokenizer"  # in the save folder


@dataclass(frozen=True, kw_only=True)
class FinetuneData:
    """Finetuning MDS sources (`foundry data finetune`'s output); their rows' length comes from
    the data, the window from `max_seq_len`."""

    sources: dict[str, SourceConfig] = need("the sources, {name: source}")
    root: str | None = opt(None, "folder or s3:// prefix that relative source paths are under")
    cache_dir: str | None = opt(None, "cache for remote sources (default ~/.cache/streaming)")
    shuffle: bool = opt(True, "shuffle the rows")
    shuffle_seed: int = opt(17, "the shuffle's seed")
    epoch_size: str | None = opt(None, "rows per epoch, e.g. '100k' (default: the data's size)")

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("data.sources is empty: name at least one source")


@dataclass(frozen=True, kw_only=True)
class FinetuneInputs:
    """What `foundry finetune` trains: a pretrained model, the window, and the finetuning data."""

    load_path: str = need("the pretrained model: a save folder or checkpoint, or an HF MPT dir")
    model: MPTConfig | None = opt(None, "null: the checkpoint's; given: its shape is checked")
    max_seq_len: int | None = opt(None, "the finetuning window; null: the model's (ALiBi: longer)")
    data: FinetuneData = need("the finetuning data (data.sources.main.local=...)")
    tokenizer: str | None = opt(None, "the data's tokenizer; null: the one beside the data")


# as `TrainCommand`: the inputs first, then the run settings (the last base's fields come first)
@dataclass(frozen=True, kw_only=True)
class FinetuneCommand(RunSettings, FinetuneInputs):
    """`foundry finetune`: continue a pretrained MPT on finetuning MDS data; the run settings
    are `foundry train`'s (`RunSettings`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_seq_len is not None and self.max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1 (or null), got {self.max_seq_len}")


@dataclass(frozen=True, kw_only=True)
class FinetunePlan:
    """What a finetune will do, known before any weights are read."""

    start: StartPoint
    train: TrainCommand  # the run in `foundry train`'s form (model: the one finetuned)
    tokenizer: str
    notes: tuple[str, ...]  # what changed from the checkpoint (window, embedding rows)


def _data_folders(cfg: FinetuneCommand) -> list[tuple[str, str]]:
    """(key, local folder) of each source that is read from local disk."""
    out = []
    for name, source in cfg.data.sources.items():
        if source.remote is None and source.local is not None:
            folder = source.local
            if cfg.data.root is not None and not os.path.isabs(folder):
                folder = os.path.join(cfg.data.root, folder)
            if source.split is not None:
                folder = os.path.join(folder, source.split)
            out.append((f"data.sources.{name}", folder))
    return out


def _tokenizer(cfg: FinetuneCommand, start: StartPoint) -> str:
    if cfg.tokenizer is not None:
        return cfg.tokenizer
    beside = [f for _, f in _data_folders(cfg) if (Path(f) / "tokenizer.json").is_file()]
    texts = {(Path(f) / "tokenizer.json").read_text() for f in beside}
    if len(texts) > 1:
        raise FinetuneError(
            f"the data sources were tokenized with different tokenizers ({', '.join(beside)}):"
            " prepare them with one, or name it with tokenizer=..."
        )
    if beside:
        return beside[0]
    if start.tokenizer is not None:
        return start.tokenizer
    raise FinetuneError(
        "no tokenizer known for the data: none beside it (foundry data finetune saves one) and "
        f"none with load_path={cfg.load_path}; set tokenizer=..."
    )


def _check_data(cfg: FinetuneCommand) -> None:
    """Each local source is a prepared dataset (its index.json), or a `FinetuneError` names its
    key and folder: before a tokenizer is looked for beside it."""
    for key, folder in _data_folders(cfg):
        index = Path(folder) / "index.json"
        if index.is_file():
            continue
        found = "holds no prepared dataset" if Path(folder).is_dir() else "does not exist"
        where = "" if os.path.isabs(folder) else f" (relative to {os.getcwd()})"
        raise FinetuneError(
            f"{key}.local: {folder} {found} (no {index}){where}: prepare it with"
            " `foundry data finetune`, or fix the path"
        )


def _longest_row(folder: str, key: str) -> int | None:
    """The longest row of a local source of finetuning rows (its columns read from index.json):
    from its report (`foundry data finetune`'s), else its first row's length; None when the
    folder holds no dataset (`_check_data` refuses it first)."""
    from streaming import StreamingDataset

    index = Path(folder) / "index.json"
    if not index.is_file():
        return None
    shards = json.loads(index.read_text()).get("shards") or []
    columns = sorted(shards[0].get("column_names", [])) if shards else []
    if not {"input_ids", "labels"} <= set(columns):
        raise FinetuneError(
            f"{key}: {folder} holds rows with columns {columns}, not finetuning rows "
            "(input_ids and labels): prepare it with foundry data finetune"
        )
    report = Path(folder) / "foundry_report.json"
    if report.is_file():
        longest = json.loads(report.read_text()).get("output", {}).get("longest_row")
        if longest is not None:
            return longest
    return len(StreamingDataset(local=folder, batch_size=1, shuffle=False)[0]["input_ids"])


def _check_rows(cfg: FinetuneCommand, window: int) -> None:
    """Each local source holds finetuning rows that fit the window."""
    for key, folder in _data_folders(cfg):
        longest = _longest_row(folder, key)
        if longest is not None and longest > window:
            raise FinetuneError(
                f"{key}: its rows hold up to {longest} tokens, longer than the finetuning window"
                f" of {window}: set max_seq_len={longest} (an ALiBi model runs longer windows)"
                f" or prepare the data with max_seq_len<={window}"
            )


def _train_form(cfg: FinetuneCommand, model: MPTConfig, tokenizer: str) -> TrainCommand:
    """The run as a `TrainCommand` (what `build_run` takes and the save folder records): this
    command's run settings, the model finetuned, and the data at its window."""
    d = cfg.data
    data = DataConfig(
        sources=d.sources,
        root=d.root,
        max_seq_len=model.max_seq_len,
        cache_dir=d.cache_dir,
        shuffle=d.shuffle,
        shuffle_seed=d.shuffle_seed,
        epoch_size=d.epoch_size,
    )
    return TrainCommand(model=model, data=data, tokenizer=tokenizer, **run_settings(cfg))


def plan_finetune(cfg: FinetuneCommand) -> FinetunePlan:
    """Every check that needs no weights (see the module docstring); raises `FinetuneError`."""
    from foundry.data.mix import streams_from_config
    from foundry.tokenizer import load_tokenizer

    start = read_start(cfg.load_path)
    _check_data(cfg)
    tokenizer = _tokenizer(cfg, start)
    try:
        vocab_needed = load_tokenizer(tokenizer).vocab_size
    except (FileNotFoundError, ValueError) as err:
        raise FinetuneError(f"tokenizer: {err}") from err
    model, notes = target_config(
        start.config, model=cfg.model, max_seq_len=cfg.max_seq_len, vocab_needed=vocab_needed
    )
    _check_rows(cfg, model.max_seq_len)
    train = _train_form(cfg, model, tokenizer)
    check_schedule(train, max_seq_len=model.max_seq_len)  # the window known: tokens count too
    streams_from_config(train.data)  # every source exists, before any weights are read
    return FinetunePlan(start=start, train=train, tokenizer=tokenizer, notes=tuple(notes))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _save_run_files(plan: FinetunePlan, config_text: str, place: Placement) -> None:
    """Rank 0: the run in the train form, this command's config, and the tokenizer."""
    import yaml

    from foundry.train import save_config
    from streaming.storage import is_remote, join_url, upload_bytes, write_bytes_atomic

    folder = plan.train.save_folder
    if folder is None or place.rank != 0:
        return
    train = plan.train
    if not is_remote(folder):
        train = dataclasses.replace(train, tokenizer=os.path.join(folder, TOKENIZER_DIR))
    text = yaml.safe_dump(_plain(dataclasses.asdict(train)), sort_keys=False)
    save_config(train, text, place)
    given = Path(plan.tokenizer)
    tokenizer_dir = given.parent if given.is_file() else given
    files = {
        name: (tokenizer_dir / name).read_bytes()
        for name in ("tokenizer.json", "tokenizer_config.json")
        if (tokenizer_dir / name).is_file()
    }
    files[FINETUNE_CONFIG_FILE] = config_text.encode()
    for name, data in files.items():
        where = name if name == FINETUNE_CONFIG_FILE else f"{TOKENIZER_DIR}/{name}"
        if is_remote(folder):
            upload_bytes(data, join_url(folder, where))
        else:
            os.makedirs(os.path.join(folder, TOKENIZER_DIR), exist_ok=True)
            write_bytes_atomic(os.path.join(folder, where), data)


def finetune(cfg: FinetuneCommand, config_text: str = "") -> Any:
    """Check, load, train; returns the finished `foundry.train.Run`."""
    from foundry.model import MPTTrainable, choose_attention
    from foundry.train import build_run, check_run

    place = placement(cfg)
    plan = plan_finetune(cfg)
    for note in plan.notes:
        log.info("finetune: %s", note)
    # hardware, ranks, vocabulary, a save folder of another shape
    check_run(plan.train, place, command="finetune")
    target = choose_attention(plan.train.model, place.device, asked=cfg.attn_impl)
    on = place.device if place.world == 1 else torch.device("cpu")  # FSDP2 shards from CPU
    model = MPTTrainable(load_start(plan.start, target, device=on))
    run = build_run(plan.train, place, model=model)  # the Trainer has resumed, if it could
    _save_run_files(plan, config_text, place)
    run.trainer.fit()
    if place.rank == 0:
        print(_summary(run, plan), file=sys.stdout, flush=True)
    return run


def _summary(run: Any, plan: FinetunePlan) -> str:
    state = run.trainer.state
    headline = f"finetuned {plan.start.path} to batch {state.timestamp.batch} ({run.attn_impl})"
    notes = [f"  {note}" for note in plan.notes]
    return "\n".join([headline, *notes, *outcome_lines(run, plan.train)])


def run_command(cfg: FinetuneCommand, config_text: str) -> int:
    """`foundry finetune`: first where it runs, as `foundry train` (`foundry.launch`: torchrun
    started here, or the launch written for the cluster; a finetune has no plan to print with
    it); in this process: check, load, train, summarize."""
    # a finetune that cannot start is not launched (tokens wait for the window: the checkpoint's)
    check_schedule(cfg, max_seq_len=cfg.max_seq_len)
    where = choose_launch(cfg.launch, cfg.hardware, env=os.environ, machine=this_machine)
    if where == "write":  # its paths are the cluster's: its ranks check them there
        return write_launch(Job.of("finetune", cfg, config_text), plan=None)
    if where == "local":
        plan_finetune(cfg)  # checkpoint, data, tokenizer, window: before torchrun starts ranks
        return run_local(Job.of("finetune", cfg, config_text))
    finetune(cfg, config_text)
    return 0
