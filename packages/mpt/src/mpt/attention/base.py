"""What an attention backend is, what it declares it supports, and how the model picks one.

Every backend computes the same function: causal attention with queries aligned to the last keys
(query row i sits at position i + Tk - Tq, as when continuing from a KV cache), an optional ALiBi
bias -slope[h] * (pos_i - j), and optional per-token sequence ids (key j is visible to row i only
when their ids are equal; the model encodes packed documents and left padding this way). Shapes:
q (B, Tq, H, D), k and v (B, Tk, Hkv, D) with H a multiple of Hkv; the output is (B, Tq, H, D).

A backend declares its `Capabilities`; `why_unsupported` compares them with the `Case` at hand, and
`resolve` either returns the asked backend, falls back to another with one log line saying why,
or raises. Nothing silently drops ALiBi or a mask.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import astuple, dataclass
from typing import Any

import torch

__all__ = ["AttentionMeta", "Backend", "Capabilities", "Case", "resolve", "why_unsupported"]

log = logging.getLogger("mpt.attention")


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    alibi: bool = True
    document_mask: bool = True  # sequence_id (packed documents)
    padding_mask: bool = True  # attention_mask with padded positions
    dropout: bool = False
    kv_cache: bool = True  # fewer queries than keys (generation)
    grouped_query: bool = True  # Hkv < H
    head_dims: tuple[int, ...] | None = None  # None: any
    devices: tuple[str, ...] = ("cpu", "cuda")
    backward_devices: tuple[str, ...] = ("cpu", "cuda")  # where gradients flow through it
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True, kw_only=True)
class Case:
    """What one forward pass asks of attention (hashable: decisions are cached per case)."""

    device: str
    dtype: torch.dtype
    head_dim: int
    alibi: bool
    document_mask: bool = False
    padding_mask: bool = False
    dropout: bool = False
    kv_cache: bool = False
    grouped_query: bool = False
    backward: bool = False  # gradients will flow through attention


@dataclass(kw_only=True)
class AttentionMeta:
    """Per-forward inputs shared by every layer's attention."""

    slopes: torch.Tensor | None  # (H,) float32, or None without ALiBi
    softmax_scale: float
    q_seq_id: torch.Tensor | None = None  # (B, Tq) int64
    k_seq_id: torch.Tensor | None = None  # (B, Tk) int64
    dropout_p: float = 0.0
    skip_bits: float | str | None = 150.0  # the triton backend's ALiBi block skip (mpt.kernels)
    k_norm_max: torch.Tensor | None = None  # (B, Hkv) bound on ||k|| of this layer's cached keys
    prepared: Any = None  # what the backend's `prepare` built once for all layers

    def query_seq_id(self, q_len: int) -> torch.Tensor | None:
        """(B, Tq) sequence ids of the queries: `q_seq_id`, else those of the last `q_len` keys
        (the queries continue the keys), else None."""
        if self.q_seq_id is not None or self.k_seq_id is None:
            return self.q_seq_id
        return self.k_seq_id[:, -q_len:]


@dataclass(frozen=True, kw_only=True)
class Backend:
    """One attention implementation: `fn(q, k, v, meta)` plus what it supports."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMeta], torch.Tensor]
    caps: Capabilities | Callable[[], Capabilities]  # a callable when it depends on the environment
    available: Callable[[], str | None] = lambda: None  # a reason it cannot run here, or None
    prepare: Callable[..., Any] | None = None  # (meta, B, Tq, Tk, device, dtype) -> prepared
    # Optional: the same attention on the fused projection's output, packed(qkv, H, Hkv, meta)
    # -> (B, T, H, D), for a backend whose backward can write one (B, T, (H + 2 Hkv) D) gradient
    # (no KV cache; the model uses it when q/k LayerNorm is off).
    packed: Callable[..., torch.Tensor] | None = None

    def capabilities(self) -> Capabilities:
        return self.caps() if callable(self.caps) else self.caps


def why_unsupported(backend: Backend, case: Case) -> str | None:
    """The first reason `backend` cannot serve `case`, or None when it can."""
    reason = backend.available()
    if reason:
        return reason
    caps = backend.capabilities()
    checks = [
        (case.device in caps.devices, f"runs on {'/'.join(caps.devices)}, not {case.device}"),
        (
            not case.backward or case.device in caps.backward_devices,
            f"has no backward pass on {case.device}",
        ),
        (case.dtype in caps.dtypes, f"does not take {case.dtype}"),
        (
            caps.head_dims is None or case.head_dim in caps.head_dims,
            f"does not support head dim {case.head_dim} (supported: {caps.head_dims})",
        ),
        (caps.alibi or not case.alibi, "has no ALiBi"),
        (
            caps.document_mask or not case.document_mask,
            "cannot mask packed documents (sequence_id)",
        ),
        (caps.padding_mask or not case.padding_mask, "cannot mask padding (attention_mask)"),
        (caps.dropout or not case.dropout, "has no attention dropout"),
        (caps.kv_cache or not case.kv_cache, "cannot attend from a KV cache"),
        (caps.grouped_query or not case.grouped_query, "has no grouped-query heads"),
    ]
    for ok, reason in checks:
        if not ok:
            return reason
    return None


_decisions: dict[tuple, str] = {}
_logged: set[tuple[str, str, str]] = set()  # (asked, fallback, reason): one log line each


def resolve(backends: dict[str, Backend], name: str, fallback: str | None, case: Case) -> Backend:
    """The backend that serves `case`: `name` if it can, else `fallback` (logged once), else raise."""
    key = (name, fallback, *astuple(case))  # plain values: nothing for torch.compile to rebuild
    if key in _decisions:
        return backends[_decisions[key]]
    if name not in backends:
        raise ValueError(f"unknown attention backend {name!r}; known: {', '.join(backends)}")
    reason = why_unsupported(backends[name], case)
    chosen = name
    if reason:
        if fallback is None:
            raise ValueError(
                f"attention backend {name!r} cannot serve this forward pass: it {reason}"
            )
        if fallback not in backends:
            raise ValueError(f"unknown attn_fallback {fallback!r}; known: {', '.join(backends)}")
        second = why_unsupported(backends[fallback], case)
        if second:
            raise ValueError(
                f"attention backend {name!r} {reason}, and the fallback {fallback!r} {second}"
            )
        if (name, fallback, reason) not in _logged:
            _logged.add((name, fallback, reason))
            log.warning("attention backend %r %s; using %r for this case", name, reason, fallback)
        chosen = fallback
    _decisions[key] = chosen
    return backends[chosen]
