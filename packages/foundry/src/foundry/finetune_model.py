"""The model a finetune starts from: a pretrained checkpoint, checked, resized, loaded.

    start = read_start("runs/tiny")                     # config only: no weights read yet
    target, notes = target_config(start.config, model=None, max_seq_len=512, vocab_needed=8194)
    model = load_start(start, target, device="cpu")     # weights in, embedding grown

`load_path` is a save folder (or one checkpoint) of ours, or a Hugging Face MPT directory
(`mpt.hf`). Everything that can be wrong with it is found from its config alone, before any
weights are read: a `model=` config of another shape (every differing field named), a
`max_seq_len` the model cannot run at (learned positions or no ALiBi), and the vocabulary.

ALiBi has no position table, so an ALiBi model runs at any `max_seq_len`: finetuning beyond the
pretraining length needs only the new window. When the tokenizer has more tokens than the
checkpoint's embedding has rows (chat tokens added by `foundry data finetune`), the embedding
(and an untied LM head) grows to the tokenizer's size rounded up to a multiple of 64, each new row
the mean of the old ones; when MPT's padded vocabulary already has room, nothing grows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from foundry.train import TrainError
from mpt import MPTConfig, MPTForCausalLM

__all__ = [
    "SHAPE_FIELDS",
    "FinetuneError",
    "StartPoint",
    "grow_vocab",
    "load_pretrained",
    "load_start",
    "read_start",
    "target_config",
]

# The MPTConfig fields that decide the weights' shapes (the same list `foundry train` holds a
# save folder to); vocab_size is handled apart (it may grow).
SHAPE_FIELDS = (
    "d_model",
    "n_heads",
    "n_layers",
    "expansion_ratio",
    "kv_n_heads",
    "no_bias",
    "norm_type",
    "learned_pos_emb",
    "tie_word_embeddings",
    "qk_ln",
)
_ROUND = 64  # a grown vocabulary is padded to a multiple of this, as MPT's is


class FinetuneError(TrainError):
    """A finetune that cannot start as configured; the message says what to change."""


@dataclass(frozen=True, kw_only=True)
class StartPoint:
    """A pretrained model, before its weights are read."""

    path: str
    source: str  # "foundry" or "hf"
    config: MPTConfig
    tokenizer: str | None  # the tokenizer that goes with it, when known


def read_start(path: str, *, key: str = "load_path") -> StartPoint:
    """The checkpoint's model config (ours: from its `foundry_config.yaml`; Hugging Face: its
    config.json), and that there are weights to load."""
    from foundry.checkpoints import is_hf_dir

    if is_hf_dir(path):
        from mpt.hf import config_from_hf

        try:
            with open(os.path.join(path, "config.json")) as f:
                config = config_from_hf(json.load(f))
        except ValueError as err:
            raise FinetuneError(f"{key}={path}: {err}") from err
        tokenizer = path if os.path.isfile(os.path.join(path, "tokenizer.json")) else None
        return StartPoint(path=path, source="hf", config=config, tokenizer=tokenizer)
    import yaml

    from composer_lite.checkpoint import CheckpointManager
    from foundry.checkpoints import save_folder_of
    from foundry.schema import TrainCommand
    from foundry.train import saved_config
    from foundry.validate import build

    try:
        folder, checkpoint = save_folder_of(path)
    except FileNotFoundError as err:
        raise FinetuneError(
            f"{key}={path}: not a Hugging Face MPT directory (config.json with model_type 'mpt')"
            f" and {err}"
        ) from err
    cfg = build(TrainCommand, yaml.safe_load(saved_config(folder)), what=f"{folder}'s config")
    if checkpoint is None and CheckpointManager(folder).latest() is None:
        raise FinetuneError(f"{key}={path}: the save folder holds no complete checkpoint yet")
    return StartPoint(path=path, source="foundry", config=cfg.model, tokenizer=cfg.tokenizer)


def _shape_differences(checkpoint: MPTConfig, model: MPTConfig) -> list[str]:
    fields = [*SHAPE_FIELDS, "vocab_size"]
    if checkpoint.learned_pos_emb:
        fields.append("max_seq_len")  # its position table has max_seq_len rows
    return [
        f"model.{k}: {getattr(checkpoint, k)!r} in the checkpoint, {getattr(model, k)!r} here"
        for k in fields
        if getattr(checkpoint, k) != getattr(model, k)
    ]


def target_config(
    checkpoint: MPTConfig,
    *,
    model: MPTConfig | None,
    max_seq_len: int | None,
    vocab_needed: int | None,
    where: str = "load_path",
) -> tuple[MPTConfig, list[str]]:
    """(the config to finetune, notes on what changed). `model`: the config's model, whose
    shape must be the checkpoint's (None: the checkpoint's own); `max_seq_len`: the window
    (None: the model's); `vocab_needed`: the tokenizer's size (None: unknown)."""
    base = checkpoint
    if model is not None:
        differences = _shape_differences(checkpoint, model)
        if differences:
            raise FinetuneError(
                f"{where} holds a model of another shape than the config's model ("
                + "; ".join(differences)
                + "): set those model.* fields, or leave model= out to take the checkpoint's"
            )
        base = model
    notes = []
    window = max_seq_len or base.max_seq_len
    if window != checkpoint.max_seq_len:
        if checkpoint.learned_pos_emb or not checkpoint.alibi:
            why = "learned positions" if checkpoint.learned_pos_emb else "no ALiBi"
            raise FinetuneError(
                f"max_seq_len={window}, but the checkpoint ({where}) was trained at "
                f"{checkpoint.max_seq_len} with {why}: it has no positions beyond that; keep "
                f"max_seq_len={checkpoint.max_seq_len}"
            )
        notes.append(
            f"window {checkpoint.max_seq_len} -> {window} tokens (ALiBi: no position table)"
        )
    vocab = base.vocab_size
    if vocab_needed is not None and vocab_needed > vocab:
        grown = -(-vocab_needed // _ROUND) * _ROUND
        notes.append(
            f"embedding grown from {vocab} to {grown} rows for the tokenizer's {vocab_needed} "
            "tokens (new rows: the mean embedding)"
        )
        vocab = grown
    return base.replace(max_seq_len=window, vocab_size=vocab), notes


def grow_vocab(state: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """`state` with the embedding (and an untied LM head) grown to `vocab_size` rows, each new
    row the mean of the old rows."""
    out = dict(state)
    for key in ("transformer.wte.weight", "lm_head.weight"):
        if key not in out:
            continue
        weight = out[key]  # (V, d)
        extra = vocab_size - weight.shape[0]
        assert extra >= 0, f"{key}: {weight.shape[0]} rows, cannot shrink to {vocab_size}"
        mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
        out[key] = torch.cat([weight, mean.expand(extra, -1)], dim=0)
    return out


def load_start(start: StartPoint, target: MPTConfig, *, device: str | torch.device = "cpu"):
    """`mpt.MPTForCausalLM` of config `target` (in train mode) with the checkpoint's weights."""
    from foundry.checkpoints import load_model

    loaded = load_model(start.path, device="cpu").model
    state = loaded.state_dict()
    del loaded
    if target.vocab_size != start.config.vocab_size:
        state = grow_vocab(state, target.vocab_size)
    model = MPTForCausalLM(target, device="meta")
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).train()


def load_pretrained(
    path: str,
    *,
    max_seq_len: int | None = None,
    vocab_needed: int | None = None,
    device: str | torch.device = "cpu",
    attn_impl: str = "auto",
) -> MPTForCausalLM:
    """A pretrained model at another window (and vocabulary), in eval mode: what `foundry
    finetune` starts from, for evaluation (e.g. at 4x the pretraining length)."""
    from foundry.model import choose_attention

    start = read_start(path)
    target, _ = target_config(
        start.config, model=None, max_seq_len=max_seq_len, vocab_needed=vocab_needed
    )
    target = choose_attention(target, torch.device(device), asked=attn_impl)
    return load_start(start, target, device=device).eval()
