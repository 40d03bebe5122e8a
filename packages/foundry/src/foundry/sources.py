"""The models `foundry generate` and `foundry convert` read, looked at before any weight is loaded.

    source = inspect_source("runs/demo")        # kind, MPTConfig, tokenizer: no weights read
    model = load_source(source, device="cpu")   # then the weights

A `load_path` is one of:

- "foundry": a save folder of `foundry train` (its newest checkpoint) or a checkpoint in one; the
  config is its `foundry_config.yaml`, the tokenizer the run's `tokenizer`;
- "hf": a Hugging Face MPT directory (config.json with model_type "mpt"); the tokenizer is the
  directory itself when it holds a tokenizer.json;
- "file": a consolidated `.safetensors` file of `foundry convert to=file` (its own metadata).

Knowing the config first lets a command refuse what cannot work (a prompt longer than the window,
settings transformers' MPT cannot express, a tokenizer larger than the vocabulary) before the
weights are read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Literal

import torch

from mpt import MPTConfig, MPTForCausalLM

__all__ = ["DTYPES", "ModelSource", "inspect_source", "load_source"]

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """What a load_path holds, known without its weights."""

    kind: Literal["foundry", "hf", "file"]
    path: str
    config: MPTConfig
    tokenizer: str | None  # tokenizer.json or a folder holding one; None: unknown


def inspect_source(path: str, *, key: str = "load_path") -> ModelSource:
    """The kind, config and tokenizer of `path`; `key` names the setting in errors."""
    from foundry.checkpoints import is_hf_dir

    if os.path.isfile(path):
        from foundry.consolidate import read_header

        header = read_header(path)
        return ModelSource(kind="file", path=path, config=header.config, tokenizer=header.tokenizer)
    if is_hf_dir(path):
        from mpt.hf import config_from_hf

        with open(os.path.join(path, "config.json")) as f:
            config = config_from_hf(json.load(f))
        has_tokenizer = os.path.isfile(os.path.join(path, "tokenizer.json"))
        return ModelSource(
            kind="hf", path=path, config=config, tokenizer=path if has_tokenizer else None
        )
    return _foundry_source(path, key)


def _foundry_source(path: str, key: str) -> ModelSource:
    import yaml

    from foundry.checkpoints import save_folder_of
    from foundry.schema import TrainCommand
    from foundry.train import CONFIG_FILE, saved_config
    from foundry.validate import build

    try:
        folder, _ = save_folder_of(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{key}={path}: not a foundry save folder or checkpoint (no {CONFIG_FILE} in or"
            " beside it), a Hugging Face MPT directory (config.json with model_type 'mpt') nor a"
            " consolidated .safetensors file"
        ) from None
    cfg = build(TrainCommand, yaml.safe_load(saved_config(folder)), what=f"{folder}'s config")
    return ModelSource(kind="foundry", path=path, config=cfg.model, tokenizer=cfg.tokenizer)


def load_source(
    source: ModelSource, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> MPTForCausalLM:
    """The model of `source` on `device` (attention backend for the device), in eval mode."""
    from foundry.checkpoints import load_model
    from foundry.model import choose_attention

    device = torch.device(device)
    if source.kind == "file":
        from foundry.consolidate import load_consolidated

        attn = choose_attention(source.config, device).attn_impl
        model, _ = load_consolidated(source.path, device=device, dtype=dtype, attn_impl=attn)
        return model
    return load_model(source.path, device=device, dtype=dtype).model
