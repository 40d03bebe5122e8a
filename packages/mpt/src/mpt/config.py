"""`MPTConfig`: the typed, keyword-only configuration of an MPT model.

Field names follow Hugging Face's `MptConfig` / `MptAttentionConfig` where those exist (`d_model`,
`n_heads`, `layer_norm_epsilon`, `alibi_bias_max`, `attn_impl`, ...), flattened into one dataclass;
the attention settings that transformers keeps in `attn_config` sit here at the top level. The init
settings are llm-foundry's (`kaiming_normal_` with fan-in, residual projections divided by
sqrt(2 * n_layers)).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["MPTConfig", "NORM_TYPES"]

NORM_TYPES = ("low_precision_layernorm", "layernorm")
_LOGIT_SCALE_NAMES = ("inv_sqrt_d_model",)
_FAN_MODES = ("fan_in", "fan_out")


@dataclass(kw_only=True)
class MPTConfig:
    """Shape, attention and init settings of an MPT model; validated on construction."""

    # shape
    d_model: int = 768
    n_heads: int = 12
    n_layers: int = 12
    expansion_ratio: float = 4
    max_seq_len: int = 2048
    # GPT-NeoX-20B's 50277 tokens padded to a multiple of 64, as llm-foundry does
    vocab_size: int = 50368
    kv_n_heads: int | None = None  # None: one key/value head per query head; 1: multi-query
    # layers
    no_bias: bool = True
    norm_type: str = "low_precision_layernorm"
    layer_norm_epsilon: float = 1e-5
    learned_pos_emb: bool = False  # ALiBi needs no position embedding; True adds a learned table
    tie_word_embeddings: bool = True
    embedding_fraction: float = 1.0  # GLM's trick: scale the embedding gradient by this fraction
    logit_scale: float | str | None = None  # a number, "inv_sqrt_d_model", or None (no scaling)
    # attention
    attn_impl: str = "torch"  # a key of mpt.attention.ATTENTION
    attn_fallback: str | None = "torch"  # backend for cases attn_impl cannot serve; None: raise
    alibi: bool = True
    alibi_bias_max: float = 8
    # ALiBi extrapolates past the training length (MPT-StoryWriter, trained at 65k tokens, read
    # 84k): True accepts sequences longer than max_seq_len. Off by default, so that a sequence
    # longer than the model was built for is an error unless it is asked for.
    alibi_extrapolate: bool = False
    # triton backend: skip key blocks whose softmax weight is provably below 2^-bits; "rounding":
    # 25 + ceil(log2(keys)) bits, the skipped weights of a row sum to < 2^-25 of the row's sum (an
    # fp32-rounding-level change; 1.7% faster mpt_1b training steps on an H100 than 150); 150:
    # exactly zero in fp32; None: off
    attn_skip_bits: float | str | None = "rounding"
    qk_ln: bool = False
    clip_qkv: float | None = None
    softmax_scale: float | None = None  # None: 1 / sqrt(head_dim)
    # dropout (training only)
    attn_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    emb_pdrop: float = 0.0
    # init (llm-foundry's kaiming_normal_ defaults)
    init_std: float | None = None  # a number: normal(0, init_std) instead of kaiming
    init_gain: float = 0.0  # the `a` of kaiming_normal_
    fan_mode: str = "fan_in"
    init_nonlinearity: str = "relu"
    # True: divide the residual projections by sqrt(2 * n_layers); a number: by that number
    init_div_is_residual: bool | float = True
    emb_init_std: float | None = None  # None: the same init as the linear layers

    def __post_init__(self) -> None:
        problems = []
        for name in ("d_model", "n_heads", "n_layers", "max_seq_len", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not problems and self.d_model % self.n_heads:
            problems.append(
                f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}"
                f" (head_dim would be {self.d_model / self.n_heads:g})"
            )
        kv = self.kv_n_heads
        if kv is not None and (not isinstance(kv, int) or kv < 1 or self.n_heads % kv):
            problems.append(
                f"kv_n_heads {kv!r} must be a positive divisor of n_heads {self.n_heads}"
            )
        if self.expansion_ratio <= 0 or int(self.d_model * self.expansion_ratio) < 1:
            problems.append(f"expansion_ratio must be positive, got {self.expansion_ratio!r}")
        if self.norm_type not in NORM_TYPES:
            problems.append(f"norm_type {self.norm_type!r} is not one of {NORM_TYPES}")
        if not 0 < self.embedding_fraction <= 1:
            problems.append(
                f"embedding_fraction must be in (0, 1], got {self.embedding_fraction!r}"
            )
        if isinstance(self.logit_scale, str) and self.logit_scale not in _LOGIT_SCALE_NAMES:
            problems.append(
                f"logit_scale {self.logit_scale!r} is not a number or one of {_LOGIT_SCALE_NAMES}"
            )
        if self.fan_mode not in _FAN_MODES:
            problems.append(f"fan_mode {self.fan_mode!r} is not one of {_FAN_MODES}")
        for name in ("attn_pdrop", "resid_pdrop", "emb_pdrop"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.alibi and self.alibi_bias_max <= 0:
            problems.append(f"alibi_bias_max must be positive, got {self.alibi_bias_max!r}")
        if self.alibi_extrapolate and (not self.alibi or self.learned_pos_emb):
            problems.append(
                "alibi_extrapolate=True needs alibi=True and learned_pos_emb=False (a model with"
                " learned positions or without ALiBi has no positions beyond max_seq_len)"
            )
        problems += _attention_problems(self.attn_impl, self.attn_fallback)
        skip = self.attn_skip_bits
        if (
            isinstance(skip, str)
            and skip != "rounding"
            or (not isinstance(skip, str) and skip is not None and not skip >= 0)
        ):
            problems.append(
                f"attn_skip_bits must be None, a number >= 0 or 'rounding', got {skip!r}"
            )
        if self.clip_qkv is not None and self.clip_qkv <= 0:
            problems.append(f"clip_qkv must be positive or None, got {self.clip_qkv!r}")
        if self.softmax_scale is not None and not self.softmax_scale > 0:
            problems.append(f"softmax_scale must be positive or None, got {self.softmax_scale!r}")
        if not self.layer_norm_epsilon > 0:
            problems.append(f"layer_norm_epsilon must be positive, got {self.layer_norm_epsilon!r}")
        if problems:
            raise ValueError("invalid MPTConfig: " + "; ".join(problems))

    def check_length(self, total: int, described: str | None = None) -> None:
        """Raise when a forward over `total` positions exceeds what this model may run.

        `described` says how the total came about (default: "sequence length <total>")."""
        if total <= self.max_seq_len or self.alibi_extrapolate:
            return
        if self.learned_pos_emb:
            hint = "the model has no learned positions beyond it"
        elif not self.alibi:
            hint = "without ALiBi the model has no positions beyond it"
        else:
            hint = (
                "ALiBi extrapolates: set alibi_extrapolate=True to run longer sequences on"
                " purpose, or raise max_seq_len (ALiBi weights do not depend on it)"
            )
        described = described or f"sequence length {total}"
        raise ValueError(f"{described} exceeds max_seq_len {self.max_seq_len}; {hint}")

    # derived sizes
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads if self.kv_n_heads is None else self.kv_n_heads

    @property
    def ffn_hidden_size(self) -> int:
        return int(self.d_model * self.expansion_ratio)

    @property
    def qkv_size(self) -> int:
        return self.d_model + 2 * self.n_kv_heads * self.head_dim

    def num_params(self, *, include_embedding: bool = True) -> int:
        """Parameters of the model this config builds, counted from the shapes (no model needed)."""
        d, bias = self.d_model, not self.no_bias
        norm = d * (2 if bias else 1)
        attn = d * self.qkv_size + d * d + (self.qkv_size + d if bias else 0)
        if self.qk_ln:
            attn += (d + self.n_kv_heads * self.head_dim) * (2 if bias else 1)
        ffn = 2 * d * self.ffn_hidden_size + (self.ffn_hidden_size + d if bias else 0)
        n = self.n_layers * (2 * norm + attn + ffn) + norm
        if include_embedding:
            n += self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
            n += self.max_seq_len * d if self.learned_pos_emb else 0
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token, llm-foundry's definition: 6*N + 12*n_layers*d_model*seq_len.

        N counts every parameter (embeddings included, as llm-foundry's MFU does); the second term
        is the attention score and value products, forward and backward, without causal savings.
        """
        return 6.0 * self.num_params() + 12.0 * self.n_layers * self.d_model * seq_len

    def resolved_softmax_scale(self) -> float:
        return (
            self.softmax_scale if self.softmax_scale is not None else 1 / math.sqrt(self.head_dim)
        )

    def resolved_logit_scale(self) -> float | None:
        if self.logit_scale == "inv_sqrt_d_model":
            return 1 / math.sqrt(self.d_model)
        return self.logit_scale

    # (de)serialization
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MPTConfig:
        """Builds a config from a plain dict; unknown keys are an error that lists all of them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown MPTConfig keys: {', '.join(unknown)} (known: {sorted(known)})"
            )
        return cls(**data)

    def replace(self, **changes: Any) -> MPTConfig:
        """A copy with some fields changed (validated; unknown names listed)."""
        return MPTConfig.from_dict({**self.to_dict(), **changes})


def _attention_problems(impl: Any, fallback: Any) -> list[str]:
    """Names that are not attention backends (checked here, not hours later at the first forward)."""
    from mpt.attention import ATTENTION  # the backend table imports torch and the kernels' glue

    known = ", ".join(ATTENTION)
    problems = []
    if not isinstance(impl, str) or impl not in ATTENTION:
        problems.append(f"attn_impl {impl!r} is not an attention backend (known: {known})")
    if fallback is not None and (not isinstance(fallback, str) or fallback not in ATTENTION):
        problems.append(
            f"attn_fallback {fallback!r} is not an attention backend (known: {known}; None raises"
            " instead of falling back)"
        )
    return problems
