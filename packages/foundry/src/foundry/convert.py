"""`foundry convert`: a model from one form to another, never holding two copies of its weights.

    foundry convert load_path=runs/tiny to=hf out=hf-tiny            # MptForCausalLM directory
    foundry convert load_path=hf/mpt-7b to=foundry out=runs/mpt-7b  # then finetune load_path=...
    foundry convert load_path=runs/big/ep0-ba900 to=file out=big.safetensors  # one file from shards

    from foundry.convert import convert
    convert("runs/tiny", "hf-tiny", to="hf", dtype=torch.bfloat16)

| load_path                                   | to=hf | to=foundry | to=file |
| foundry save folder / checkpoint (any ranks) | yes   | -          | yes     |
| Hugging Face MPT directory                  | -     | yes        | -       |
| consolidated .safetensors file              | yes   | yes        | -       |

- to=hf: `mpt.hf.export_hf` (safetensors, `max_shard_size` shards with an index, `dtype`) plus the
  tokenizer's files (`tokenizer.json`, `tokenizer_config.json`) and a `generation_config.json`
  with its EOS and padding ids, so that transformers' `generate` stops where ours does. A model
  with settings transformers' MPT cannot compute is refused by name (`check_hf_compatible`)
  before any weight is read.
- to=foundry: a save folder that `foundry.checkpoints.load_trained` (and so `foundry generate`
  and `finetune load_path=`) reads: `foundry_config.yaml` (the train config's defaults with this
  model, `max_duration: 0ba` and no data: a description, not a run to resume), one checkpoint
  `ep0-ba0` (composer-lite's format, model weights only) and the tokenizer's files.
- to=file: `foundry.consolidate.write_consolidated`.

Memory: to=hf loads the model once (DCP reads the shards of any number of ranks into it) and
`export_hf` writes one shard at a time (one shard's cast copy at most); to=foundry loads the
Hugging Face weights once (assigned into the model, no copy) and DCP writes them tensor by
tensor; to=file holds one tensor. Every output is written under a temporary name beside `out`
and renamed into place when complete; an existing `out` is replaced only with `overwrite=true`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from foundry.sources import DTYPES, ModelSource, inspect_source, load_source
from foundry.validate import need, opt
from mpt import MPTConfig

__all__ = ["ConvertCommand", "convert", "run_command"]

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CHECKPOINT_NAME = "ep0-ba0"
_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_ROUTES = {("foundry", "hf"), ("file", "hf"), ("hf", "foundry"), ("file", "foundry")}
_ROUTES |= {("foundry", "file")}


@dataclass(frozen=True, kw_only=True)
class ConvertCommand:
    """`foundry convert`: our checkpoint <-> Hugging Face MPT; a sharded checkpoint -> one file."""

    load_path: str = need(
        "a foundry save folder or checkpoint (any number of ranks), a Hugging Face MPT directory,"
        " or a consolidated .safetensors file"
    )
    to: Literal["hf", "foundry", "file"] = need(
        "hf: a MptForCausalLM directory; foundry: a save folder (load_trained, finetune"
        " load_path); file: one consolidated .safetensors file"
    )
    out: str = need("the output directory (to=hf, to=foundry) or file (to=file)")
    tokenizer: str | None = opt(
        None, "tokenizer copied beside the weights (hf, foundry); null: the one load_path names"
    )
    dtype: Literal["fp32", "bf16", "fp16"] | None = opt(None, "cast the weights; null: as stored")
    max_shard_size: int | str = opt("5GB", "to=hf: the largest safetensors shard ('5GB', '500MiB')")
    overwrite: bool = opt(False, "replace an existing out")

    def __post_init__(self) -> None:
        if not _SIZE.match(str(self.max_shard_size)):
            raise ValueError(
                f"max_shard_size must be like '5GB', '500MiB' or a byte count, got"
                f" {self.max_shard_size!r}"
            )


def _check_route(source: ModelSource, to: str) -> None:
    if (source.kind, to) in _ROUTES:
        return
    what = {
        "foundry": "a foundry checkpoint",
        "hf": "a Hugging Face MPT directory",
        "file": "a consolidated file",
    }
    offered = sorted(t for k, t in _ROUTES if k == source.kind)
    raise ValueError(
        f"load_path={source.path} is {what[source.kind]}; it converts to={' or to='.join(offered)},"
        f" not to={to}"
    )


def _check_out(out: str, overwrite: bool) -> None:
    path = Path(out)
    taken = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if taken and not overwrite:
        raise FileExistsError(f"out={out} exists; pass overwrite=true to replace it")


def _tokenizer_files(tokenizer: str | None, given: bool) -> list[Path]:
    """The files of a tokenizer (a tokenizer.json or a folder) to copy; [] when there is none.
    A tokenizer given on the command line must exist; the one a run names may be gone."""
    if tokenizer is None:
        return []
    where = Path(tokenizer).expanduser()
    folder = where if where.is_dir() else where.parent
    main = where / TOKENIZER_FILES[0] if where.is_dir() else where
    if not main.is_file():
        if given:
            raise FileNotFoundError(f"tokenizer={tokenizer} not found (expected a tokenizer.json)")
        log.warning("the tokenizer %s that load_path names is gone; not copied", tokenizer)
        return []
    return [main] + [folder / n for n in TOKENIZER_FILES[1:] if (folder / n).is_file()]


def _copy_tokenizer(files: list[Path], folder: Path) -> None:
    for i, file in enumerate(files):
        shutil.copyfile(file, folder / (TOKENIZER_FILES[0] if i == 0 else file.name))


def _staging(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished `tmp` to `out`, replacing what was there only when `overwrite`: `out`
    may have been written since `_check_out` ran (another writer); then `tmp` is removed."""
    if not overwrite:
        try:
            _check_out(str(out), overwrite)
        except FileExistsError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    old = None
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    elif out.exists():
        old = out.with_name(f".{out.name}.replaced-{tmp.name.rsplit('-', 1)[-1]}")
        out.rename(old)
    tmp.rename(out)
    if old is not None and old.is_dir():
        shutil.rmtree(old)
    elif old is not None:
        old.unlink()


def _generation_config(folder: Path) -> None:
    """generation_config.json with the EOS and padding ids of the tokenizer in `folder`."""
    from transformers import GenerationConfig

    from foundry.tokenizer import load_tokenizer

    tok = load_tokenizer(folder)
    config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config.save_pretrained(str(folder))


def _to_hf(source: ModelSource, out: Path, *, files, dtype, max_shard_size, overwrite) -> None:
    from mpt.hf import export_hf

    model = load_source(source)
    tmp = _staging(out)
    try:
        export_hf(model, None, tmp / "model", max_shard_size=max_shard_size, dtype=dtype)
        del model
        folder = tmp / "model"
        if files:
            _copy_tokenizer(files, folder)
            _generation_config(folder)
        _move_into_place(folder, out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _train_config_text(config, *, source: str, out: Path, tokenizer: str | None) -> str:
    """foundry_config.yaml of a converted model: `foundry train`'s defaults with this model."""
    import yaml

    from foundry.compose import compose_config
    from foundry.schema import TrainCommand
    from foundry.validate import build

    composed = compose_config("train", ["max_duration=0ba", "data.sources.main.local=null"])
    values = dict(composed.config)
    values["model"] = config.to_dict()
    values["data"] = {**values["data"], "max_seq_len": config.max_seq_len}
    values |= {"tokenizer": tokenizer, "save_folder": str(out), "run_name": out.name}
    build(TrainCommand, values, what="the converted model's config")  # loads back, or raise here
    head = (
        f"# foundry convert: {source} -> this save folder (the model, for load_trained and"
        " finetune load_path; not a run to resume)\n"
    )
    return head + yaml.safe_dump(values, sort_keys=False)


def _to_foundry(source: ModelSource, out: Path, *, files, dtype, overwrite) -> None:
    from composer_lite.checkpoint import CheckpointManager
    from foundry.model import MPTTrainable
    from foundry.train import CONFIG_FILE

    model = load_source(source, dtype=dtype)
    tmp = _staging(out)
    try:
        CheckpointManager(tmp).save(
            CHECKPOINT_NAME,
            model=MPTTrainable(model),
            optimizer=None,
            objects={"converted_from": source.path},
        )
        default = MPTConfig()  # the backend is chosen for the device when loaded, not stored
        config = model.config.replace(
            attn_impl=default.attn_impl, attn_fallback=default.attn_fallback
        )
        del model
        _copy_tokenizer(files, tmp)
        tokenizer = str(out.resolve()) if files else None
        text = _train_config_text(
            config, source=source.path, out=out.resolve(), tokenizer=tokenizer
        )
        (tmp / CONFIG_FILE).write_text(text)
        _move_into_place(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def convert(
    load_path: str,
    out: str,
    *,
    to: Literal["hf", "foundry", "file"],
    tokenizer: str | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> Path:
    """Convert `load_path` into `out` (see the module docstring); returns `out`. Everything that
    can be known wrong is refused before any weight is read."""
    from mpt.hf import check_hf_compatible

    source = inspect_source(load_path)
    _check_route(source, to)
    if to == "hf":
        try:
            check_hf_compatible(source.config)
        except ValueError as err:
            raise ValueError(f"load_path={load_path} cannot be converted to=hf: {err}") from None
    _check_out(out, overwrite)
    target = Path(out)
    if to == "file":
        from foundry.consolidate import write_consolidated

        write_consolidated(load_path, out, dtype=dtype, overwrite=overwrite)
        return target
    files = _tokenizer_files(tokenizer or source.tokenizer, given=tokenizer is not None)
    if to == "hf":
        _to_hf(
            source,
            target,
            files=files,
            dtype=dtype,
            max_shard_size=max_shard_size,
            overwrite=overwrite,
        )
    else:
        _to_foundry(source, target, files=files, dtype=dtype, overwrite=overwrite)
    return target


def run_command(cfg: ConvertCommand, config_text: str) -> int:
    """`foundry convert`: convert and say where it went."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            "foundry convert runs in one process; run it without torchrun (every rank would"
            " convert the whole model into the same out)"
        )
    out = convert(
        cfg.load_path,
        cfg.out,
        to=cfg.to,
        tokenizer=cfg.tokenizer,
        dtype=DTYPES.get(cfg.dtype),
        max_shard_size=cfg.max_shard_size,
        overwrite=cfg.overwrite,
    )
    print(f"converted {cfg.load_path} to={cfg.to}: {out}", flush=True)
    return 0
