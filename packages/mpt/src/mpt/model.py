"""The MPT decoder for one device: `MPTForCausalLM` and its blocks.

Module and parameter names follow llm-foundry and transformers (`transformer.wte`,
`transformer.blocks.N.attn.Wqkv`, `...ffn.up_proj`, `transformer.norm_f`), so state dicts map
one-to-one (see `mpt.hf`). Parallelism (FSDP2, activation checkpointing, compile) is applied from
outside over `blocks()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mpt.alibi import alibi_slopes
from mpt.attention import ATTENTION, AttentionMeta, Case, resolve
from mpt.cache import KVCache, document_positions
from mpt.config import MPTConfig
from mpt.init import init_weights
from mpt.loss import causal_lm_loss, chunked_lm_head_loss
from mpt.norm import make_norm

__all__ = [
    "MPTAttention",
    "MPTBlock",
    "MPTForCausalLM",
    "MPTMLP",
    "MPTModel",
    "MPTOutput",
]


@dataclass
class MPTOutput:
    logits: torch.Tensor | None  # (B, T, vocab); None when asked for the loss alone
    loss: torch.Tensor | None = None
    past_key_values: KVCache | None = None


class MPTAttention(nn.Module):
    """Fused QKV projection, optional q/k LayerNorm and clipping, a pluggable attention backend."""

    def __init__(self, config: MPTConfig, layer_idx: int, device=None) -> None:
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        d, kv_size, bias = config.d_model, config.n_kv_heads * config.head_dim, not config.no_bias
        self.Wqkv = nn.Linear(d, config.qkv_size, bias=bias, device=device)
        kv = config.n_kv_heads * config.head_dim
        self.Wqkv._fused_rows = (d, kv, kv)  # q, k, v: initialized as three matrices (init.py)
        if config.qk_ln:
            eps = config.layer_norm_epsilon
            self.q_ln = make_norm(config.norm_type, d, eps=eps, bias=bias, device=device)
            self.k_ln = make_norm(config.norm_type, kv_size, eps=eps, bias=bias, device=device)
        self.out_proj = nn.Linear(d, d, bias=bias, device=device)
        self.out_proj._is_residual = True  # divided by sqrt(2 * n_layers) at init

    def forward(self, x: torch.Tensor, meta: AttentionMeta, backend, cache: KVCache | None):
        cfg = self.config
        B, T, _ = x.shape
        qkv = self.Wqkv(x)  # (B, T, d + 2 * Hkv * D)
        if cfg.clip_qkv is not None:
            qkv = qkv.clamp(min=-cfg.clip_qkv, max=cfg.clip_qkv)
        if cache is None and not cfg.qk_ln and backend.packed is not None:
            out = backend.packed(qkv, cfg.n_heads, cfg.n_kv_heads, meta)  # (B, T, H, D)
            return self.out_proj(out.reshape(B, T, cfg.d_model))
        kv_size = cfg.n_kv_heads * cfg.head_dim
        q, k, v = qkv.split([cfg.d_model, kv_size, kv_size], dim=-1)
        if cfg.qk_ln:
            q, k = self.q_ln(q).to(v.dtype), self.k_ln(k).to(v.dtype)
        q = q.view(B, T, cfg.n_heads, cfg.head_dim)  # (B, T, H, D)
        k = k.view(B, T, cfg.n_kv_heads, cfg.head_dim)  # (B, T, Hkv, D)
        v = v.view(B, T, cfg.n_kv_heads, cfg.head_dim)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, past + T, Hkv, D)
            meta = dataclasses.replace(meta, k_norm_max=cache.key_norm_max[self.layer_idx])
        out = backend.fn(q, k, v, meta)  # (B, T, H, D)
        return self.out_proj(out.reshape(B, T, cfg.d_model))


class MPTMLP(nn.Module):
    def __init__(self, config: MPTConfig, device=None) -> None:
        super().__init__()
        bias = not config.no_bias
        self.up_proj = nn.Linear(config.d_model, config.ffn_hidden_size, bias=bias, device=device)
        self.down_proj = nn.Linear(config.ffn_hidden_size, config.d_model, bias=bias, device=device)
        self.down_proj._is_residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))  # exact GELU, as MPT


class MPTBlock(nn.Module):
    """Pre-norm block: x + attn(norm_1(x)), then + ffn(norm_2(x))."""

    def __init__(self, config: MPTConfig, layer_idx: int, device=None) -> None:
        super().__init__()
        eps, bias = config.layer_norm_epsilon, not config.no_bias
        self.norm_1 = make_norm(config.norm_type, config.d_model, eps=eps, bias=bias, device=device)
        self.attn = MPTAttention(config, layer_idx, device=device)
        self.norm_2 = make_norm(config.norm_type, config.d_model, eps=eps, bias=bias, device=device)
        self.ffn = MPTMLP(config, device=device)
        self.resid_attn_dropout = nn.Dropout(config.resid_pdrop)
        self.resid_ffn_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, meta: AttentionMeta, backend, cache: KVCache | None = None):
        x = x + self.resid_attn_dropout(self.attn(self.norm_1(x), meta, backend, cache))
        return x + self.resid_ffn_dropout(self.ffn(self.norm_2(x)))


class MPTModel(nn.Module):
    """Embeddings, blocks and the final norm (transformers' `MptModel`)."""

    def __init__(self, config: MPTConfig, device=None) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.d_model, device=device)
        if config.learned_pos_emb:
            self.wpe = nn.Embedding(config.max_seq_len, config.d_model, device=device)
        self.emb_drop = nn.Dropout(config.emb_pdrop)
        self.blocks = nn.ModuleList(
            MPTBlock(config, i, device=device) for i in range(config.n_layers)
        )
        eps, bias = config.layer_norm_epsilon, not config.no_bias
        self.norm_f = make_norm(config.norm_type, config.d_model, eps=eps, bias=bias, device=device)


class MPTForCausalLM(nn.Module):
    """MPT with its LM head (tied to the embedding unless `tie_word_embeddings=False`).

    `MPTForCausalLM(config, device="meta")` builds without memory; `materialize(device)` then
    allocates and initializes (after FSDP2 sharding, each rank initializes only its shards).
    """

    def __init__(self, config: MPTConfig, device=None) -> None:
        super().__init__()
        self.config = config
        self.transformer = MPTModel(config, device=device)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False, device=device)
        self._slopes: dict[torch.device, torch.Tensor] = {}
        if torch.device(device or "cpu").type != "meta":
            self.init_weights()

    # -- the trainable-model contract's helpers ------------------------------------------------
    def blocks(self) -> list[nn.Module]:
        """The units FSDP2, activation checkpointing and compile wrap."""
        return list(self.transformer.blocks)

    def flops_per_token(self, seq_len: int) -> float:
        return self.config.flops_per_token(seq_len)

    def init_weights(self, seed: int | None = None) -> None:
        """MPT's init: kaiming-normal fan-in, residual projections divided by sqrt(2*n_layers)."""
        init_weights(self, self.config, seed=seed)

    def materialize(self, device, *, seed: int | None = None) -> MPTForCausalLM:
        """Allocates a meta-device model on `device` and initializes it; returns self."""
        self.to_empty(device=device)
        self.init_weights(seed)
        return self

    # -- forward ---------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        sequence_id: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        labels: torch.Tensor | None = None,
        return_logits: bool = True,
    ) -> MPTOutput:
        """Logits (B, T, vocab); with `labels`, the mean loss over tokens whose label is not -100.

        `attention_mask` (B, T) or (B, past + T): 1 for real tokens, 0 for (left) padding.
        `sequence_id` (B, T): packed documents attend only within themselves.
        `past_key_values`: a `KVCache` (see `new_cache`), filled in place.
        `return_logits=False` (with `labels`): the loss alone, through the chunked LM-head loss that
        never holds the (B, T, vocab) logits (training with large vocabularies and micro-batches).
        """
        cfg, cache = self.config, past_key_values
        B, T = self._check_input(input_ids, cache, labels)
        past = cache.length if cache is not None else 0
        k_ids = self._key_seq_ids(attention_mask, sequence_id, cache, B, T)  # (B, past + T) | None
        x = self.transformer.wte(input_ids)  # (B, T, d)
        if cfg.learned_pos_emb:
            x = x + self.transformer.wpe(self._positions(k_ids, cache, B, T, input_ids.device))
        if cfg.embedding_fraction < 1:
            x = x * cfg.embedding_fraction + x.detach() * (1 - cfg.embedding_fraction)
        x = self.transformer.emb_drop(x)

        meta = AttentionMeta(
            slopes=self._alibi_slopes(input_ids.device) if cfg.alibi else None,
            softmax_scale=cfg.resolved_softmax_scale(),
            q_seq_id=None if k_ids is None else k_ids[:, past:],
            k_seq_id=k_ids,
            dropout_p=cfg.attn_pdrop if self.training else 0.0,
            skip_bits=cfg.attn_skip_bits,
        )
        padded = attention_mask is not None or (cache is not None and cache.masked)
        backend, dtype = self._backend(
            x, meta, docs=sequence_id is not None, padded=padded, past=past
        )
        if backend.prepare is not None:
            meta.prepared = backend.prepare(meta, B, T, past + T, input_ids.device, dtype)
        for block in self.transformer.blocks:
            x = block(x, meta, backend, cache)
        x = self.transformer.norm_f(x)
        if cache is not None:
            cache.advance(
                k_ids[:, past:] if k_ids is not None else torch.zeros_like(input_ids),
                masked=k_ids is not None,
            )

        weight = self.transformer.wte.weight if cfg.tie_word_embeddings else self.lm_head.weight
        scale = cfg.resolved_logit_scale()
        if not return_logits:
            if labels is None:
                raise ValueError("return_logits=False needs labels: the loss is all it returns")
            loss = chunked_lm_head_loss(x, weight, labels, logit_scale=scale)
            return MPTOutput(logits=None, loss=loss, past_key_values=cache)
        logits = F.linear(x, weight)  # (B, T, vocab)
        if scale is not None:
            logits = logits * scale
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return MPTOutput(logits=logits, loss=loss, past_key_values=cache)

    def new_cache(self, batch_size: int, capacity: int, *, dtype=None) -> KVCache:
        """An empty KV cache for `capacity` positions on the model's device."""
        cfg, weight = self.config, self.transformer.wte.weight
        return KVCache(
            n_layers=cfg.n_layers,
            batch_size=batch_size,
            capacity=capacity,
            n_kv_heads=cfg.n_kv_heads,
            head_dim=cfg.head_dim,
            device=weight.device,
            dtype=dtype or weight.dtype,
        )

    def generate(self, input_ids, **kwargs) -> torch.Tensor:
        """Sampling with a KV cache; see `mpt.generate.generate` for the arguments."""
        from mpt.generate import generate

        return generate(self, input_ids, **kwargs)

    # -- helpers -----------------------------------------------------------------------------------
    def _check_input(
        self, input_ids: torch.Tensor, cache: KVCache | None, labels: torch.Tensor | None
    ) -> tuple[int, int]:
        cfg = self.config
        if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.is_complex():
            raise ValueError(
                f"input_ids must be an integer tensor (B, T), got {input_ids.dtype}"
                f" {tuple(input_ids.shape)}"
            )
        B, T = input_ids.shape
        if labels is not None and (
            labels.shape != input_ids.shape or labels.dtype.is_floating_point
        ):
            raise ValueError(
                f"labels must be an integer tensor shaped like input_ids {(B, T)}, got"
                f" {labels.dtype} {tuple(labels.shape)}"
            )
        total = T + (cache.length if cache is not None else 0)
        cfg.check_length(
            total, None if cache is None else f"sequence length {total} (cached + new)"
        )
        # One host sync per forward, cheap next to a bad id's device-side assert; skipped inside a
        # compiled graph (where it would split the graph in two).
        if input_ids.numel() and not torch.compiler.is_compiling():
            _check_token_ids(input_ids, labels, cfg.vocab_size)
        if cache is not None:
            if cache.batch_size != B:
                raise ValueError(f"KV cache is for batch size {cache.batch_size}, input has {B}")
            cache.check_room(T)
        return B, T

    def _key_seq_ids(self, attention_mask, sequence_id, cache, B: int, T: int):
        """(B, past + T) int64 sequence ids of every key, -1 on padding; None when no masking."""
        past = cache.length if cache is not None else 0
        if attention_mask is None and sequence_id is None and (cache is None or not cache.masked):
            return None
        new = sequence_id.long() if sequence_id is not None else None
        if sequence_id is not None and tuple(sequence_id.shape) != (B, T):
            raise ValueError(f"sequence_id has shape {tuple(sequence_id.shape)}, expected {(B, T)}")
        if attention_mask is not None:
            if attention_mask.shape[0] != B or attention_mask.shape[-1] not in (T, past + T):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}, expected ({B}, {T})"
                    f" or ({B}, {past + T})"
                )
            if new is not None or cache is None:
                new = torch.where(attention_mask[:, -T:].bool(), new if new is not None else 0, -1)
        if new is None:  # decode steps without ids continue each row's last document
            new = cache.last_id.clamp(min=0)[:, None].expand(B, T)
            if attention_mask is not None:
                new = torch.where(attention_mask[:, -T:].bool(), new, -1)
        if cache is None:
            return new
        return torch.cat([cache.seq_ids[:, :past], new], dim=1)

    def _positions(self, k_ids, cache, B: int, T: int, device) -> torch.Tensor:
        """(B, T) learned-position indices: count of real tokens before each one in its document
        (packed documents restart at 0; a cached run continues its last document)."""
        if k_ids is None:
            start = cache.positions[:, None] if cache is not None else 0
            return (start + torch.arange(T, device=device)).expand(B, T)
        if cache is None:
            last_id = torch.full((B,), -1, dtype=torch.long, device=device)
            positions = torch.zeros((B,), dtype=torch.long, device=device)
        else:
            last_id, positions = cache.last_id, cache.positions
        return document_positions(k_ids[:, -T:], last_id, positions)[0]

    def _alibi_slopes(self, device) -> torch.Tensor:
        if device not in self._slopes:
            cfg = self.config
            self._slopes[device] = alibi_slopes(cfg.n_heads, cfg.alibi_bias_max, device=device)
        return self._slopes[device]

    def _backend(self, x, meta: AttentionMeta, *, docs: bool, padded: bool, past: int):
        """(the backend that serves this forward, the dtype attention will see)."""
        cfg, dev = self.config, x.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        case = Case(
            device=dev,
            dtype=dtype,
            head_dim=cfg.head_dim,
            alibi=cfg.alibi,
            document_mask=docs,
            padding_mask=padded,
            dropout=meta.dropout_p > 0,
            kv_cache=past > 0,
            grouped_query=cfg.n_kv_heads != cfg.n_heads,
            # the blocks may train with the embedding frozen (x then needs no grad)
            backward=torch.is_grad_enabled()
            and (x.requires_grad or any(p.requires_grad for p in self.parameters())),
        )
        return resolve(ATTENTION, cfg.attn_impl, cfg.attn_fallback, case), dtype


def _check_token_ids(input_ids: torch.Tensor, labels: torch.Tensor | None, vocab: int) -> None:
    """Token ids and labels (other than -100) must lie in [0, vocab): one host sync for both."""
    stats = list(torch.aminmax(input_ids))
    if labels is not None:
        bad_labels = (labels != -100) & ((labels < 0) | (labels >= vocab))  # (B, T)
        stats.append(bad_labels.sum())
    values = torch.stack([s.long() for s in stats]).tolist()
    if values[0] < 0 or values[1] >= vocab:
        bad_id = values[0] if values[0] < 0 else values[1]
        raise ValueError(f"token id {bad_id} is outside the vocabulary [0, {vocab}) (in input_ids)")
    if labels is not None and values[2]:
        row, col = bad_labels.nonzero()[0].tolist()
        raise ValueError(
            f"{values[2]} label(s) outside the vocabulary [0, {vocab}), the first"
            f" labels[{row}, {col}] = {int(labels[row, col])}; labels are token ids, or -100"
            " where no loss counts"
        )
