"""A trained model back from its checkpoint: the resolved config beside it says what to build.

    model, cfg = load_trained("runs/demo")            # the newest checkpoint of a save folder
    model, cfg = load_trained("runs/demo/ep0-ba300")  # or one checkpoint of it

`foundry train` writes `foundry_config.yaml` into its save folder; a checkpoint is a folder in
it. The model is built from that config (on `device`, attention backend for the device) and
loaded with composer-lite's `CheckpointManager` (its files checked against their hashes); the
optimizer state is not read.
"""

from __future__ import annotations

import os

import torch

from foundry.schema import TrainCommand

__all__ = ["load_trained", "save_folder_of"]


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
