"""MPT inside the trainer: the adapter that makes `mpt.MPTForCausalLM` a trainable model.

`mpt` never imports `composer_lite`; this thin module is where the two meet (the "MPT inside the
trainer" contract). `MPTTrainable` follows `composer_lite.protocols.TrainableModel`:

    forward(batch)          -> mpt.MPTOutput (the loss computed inside, through the chunked LM
                               head in training: no (B, T, vocab) logits are held)
    loss(outputs, batch)    -> the mean next-token loss over the labels that count
    blocks()                -> the transformer blocks (units of FSDP2, checkpointing, compile)
    flops_per_token(T)      -> llm-foundry's 6N + 12 L d T, for MFU

`choose_attention` picks the attention backend the machine offers (our Triton kernels on a GPU,
SDPA on a CPU) unless the config names one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mpt import MPTConfig, MPTForCausalLM
from mpt.model import MPTOutput

__all__ = ["MPTTrainable", "choose_attention"]

log = logging.getLogger(__name__)


def choose_attention(config: MPTConfig, device: torch.device, *, asked: str = "auto") -> MPTConfig:
    """`config` with the attention backend for `device`: `asked` when it is not "auto", else
    `triton` on CUDA when the kernels can run there, else `sdpa`. Says which in one log line."""
    if asked != "auto":
        chosen, why = asked, "as configured"
    elif device.type == "cuda":
        from mpt.kernels import kernels_available

        chosen = "triton" if kernels_available() else "sdpa"
        why = "on CUDA" if chosen == "triton" else "on CUDA without Triton"
    else:
        chosen, why = "sdpa", f"on {device.type}"
    log.info("attention backend: %s (%s)", chosen, why)
    return config.replace(attn_impl=chosen)


class MPTTrainable(nn.Module):
    """`MPTForCausalLM` behind the trainable-model contract; the MPT model is `.model`."""

    def __init__(self, model: MPTForCausalLM) -> None:
        super().__init__()
        self.model = model

    @property
    def config(self) -> MPTConfig:
        return self.model.config

    def forward(self, batch: Mapping[str, Any]) -> MPTOutput:
        """The loss of an LM batch (`input_ids`, `labels`, optional `sequence_id` and
        `attention_mask`); in training without logits, in evaluation with them. Without
        `labels`: the logits alone."""
        labels = batch.get("labels")
        return self.model(
            batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            sequence_id=batch.get("sequence_id"),
            labels=labels,
            return_logits=labels is None or not self.training,
        )

    def causal_lm(self) -> nn.Module:
        """This model as a causal LM for evaluation (ids -> logits) that calls this module itself,
        so that FSDP2 gathers the parameters outside the blocks (`evalkit`'s contract)."""
        return _CausalLMView(self)

    def loss(self, outputs: MPTOutput, batch: Mapping[str, Any]) -> torch.Tensor:
        return outputs.loss

    def blocks(self) -> list[nn.Module]:
        return self.model.blocks()

    def flops_per_token(self, seq_len: int) -> float:
        return self.model.flops_per_token(seq_len)


class _CausalLMView(nn.Module):
    """`model(input_ids, attention_mask=None) -> MPTOutput` through an `MPTTrainable`'s forward."""

    def __init__(self, trainable: MPTTrainable) -> None:
        super().__init__()
        self.trainable = trainable
        self.config = trainable.config  # evalkit reads the window (max_seq_len) here

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return self.trainable({"input_ids": input_ids, "attention_mask": attention_mask})
