"""A trained model back from its checkpoint: the resolved config beside it says what to build.

    model, cfg = load_trained("runs/demo")            # the newest checkpoint of a save folder
    model, cfg = load_trained("runs/demo/ep0-ba300")  # or one checkpoint of it
    loaded = load_model("runs/demo" or "hf/mpt-dir")  # either ours or a Hugging Face MPT folder

`foundry train` writes `foundry_config.yaml` into its save folder; a checkpoint is a folder in
it. The model is built from that config (on `device`, attention backend for the device) and
loaded with composer-lite's `CheckpointManager` (its files checked against their hashes); the
optimizer state is not read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from foundry.schema import TrainCommand

__all__ = ["LoadedModel", "is_hf_dir", "load_model", "load_trained", "save_folder_of"]


def save_folder_of(path: str) -> tuple[str, str | None]:
    """(save folder, checkpoint or None for its newest) of a save folder or a checkpoint in it."""
    from foundry.train import CONFIG_FILE
    from streaming.storage import is_remote, join_url, object_exists

    location = path.rstrip("/")
    if object_exists(join_url(location, CONFIG_FILE)):
        return location, None
    parent = location.rsplit("/", 1)[0] if is_remote(location) else os.path.dirname(location)
    if parent and object_exists(join_url(parent, CONFIG_FILE)):
        return parent, location
    raise FileNotFoundError(
        f"{path} is neither a foundry save folder nor a checkpoint in one (no {CONFIG_FILE} in it"
        " or beside it): give the save_folder of a `foundry train` run"
    )


def load_trained(path: str, *, device: str | torch.device = "cpu"):
    """(`mpt.MPTForCausalLM` in eval mode, the run's `TrainCommand`) from a save folder (its
    newest checkpoint) or a checkpoint of one."""
    import yaml

    from composer_lite.checkpoint import CheckpointManager
    from foundry.model import MPTTrainable, choose_attention
    from foundry.train import saved_config
    from foundry.validate import build
    from mpt import MPTForCausalLM

    folder, checkpoint = save_folder_of(path)
    cfg = build(TrainCommand, yaml.safe_load(saved_config(folder)), what=f"{folder}'s config")
    manager = CheckpointManager(folder)
    checkpoint = checkpoint or manager.latest()
    if checkpoint is None:
        raise FileNotFoundError(f"{folder} holds no complete checkpoint yet")
    device = torch.device(device)
    model = MPTTrainable(MPTForCausalLM(choose_attention(cfg.model, device), device=device))
    manager.load(checkpoint, model=model, optimizer=None)
    return model.model.eval(), cfg


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """A model from `load_model`: where it came from and the tokenizer that goes with it."""

    model: torch.nn.Module  # mpt.MPTForCausalLM, in eval mode
    source: str  # "foundry" (a save folder or checkpoint of ours) or "hf" (a Hugging Face dir)
    path: str
    tokenizer: str | None  # tokenizer.json or a folder holding one; None when unknown
    train_config: TrainCommand | None  # the run's config for ours; None for an HF directory


def is_hf_dir(path: str) -> bool:
    """True for a local Hugging Face MPT directory (a config.json with model_type "mpt")."""
    import json

    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    with open(config) as f:
        try:
            return json.load(f).get("model_type") == "mpt"
        except ValueError as err:
            raise ValueError(f"{config} is not valid JSON: {err}") from None


def load_model(
    path: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> LoadedModel:
    """Our save folder or checkpoint (`load_trained`), or a Hugging Face MPT directory
    (`mpt.hf.import_hf`, its tokenizer.json beside the weights when there is one)."""
    from foundry.model import choose_attention

    device = torch.device(device)
    if is_hf_dir(path):
        from mpt import MPTConfig
        from mpt.hf import import_hf

        attn = choose_attention(MPTConfig(), device).attn_impl  # the backend for this device
        model = import_hf(path, dtype=dtype, attn_impl=attn)
        has_tokenizer = os.path.isfile(os.path.join(path, "tokenizer.json"))
        return LoadedModel(
            model=model.to(device).eval(),
            source="hf",
            path=path,
            tokenizer=path if has_tokenizer else None,
            train_config=None,
        )
    model, cfg = load_trained(path, device=device)
    if dtype is not None:
        model = model.to(dtype)
    return LoadedModel(
        model=model, source="foundry", path=path, tokenizer=cfg.tokenizer, train_config=cfg
    )
