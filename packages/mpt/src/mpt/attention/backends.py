"""The attention backends: `torch` (reference math), `sdpa`, `flex`, `flash` and `triton` (ours).

Each is a plain function with the signature of `base.Backend.fn` plus its declared capabilities;
`mpt.attention.ATTENTION` maps names to them.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import torch
import torch.nn.functional as F

from mpt.attention.base import AttentionMeta, Backend, Capabilities

__all__ = ["ATTENTION", "visible_mask", "score_bias"]


def visible_mask(meta: AttentionMeta, q_len: int, k_len: int, device) -> torch.Tensor:
    """(B or 1, 1, Tq, Tk) bool: causal with queries aligned to the last keys, and equal seq ids."""
    pos = torch.arange(k_len - q_len, k_len, device=device)
    mask = (torch.arange(k_len, device=device)[None, :] <= pos[:, None])[None, None]
    if meta.k_seq_id is not None:
        q_ids = meta.query_seq_id(q_len)
        mask = mask & (q_ids[:, None, :, None] == meta.k_seq_id[:, None, None, :])
    return mask


def score_bias(meta: AttentionMeta, q_len: int, k_len: int, device) -> torch.Tensor:
    """(B or 1, H or 1, Tq, Tk) float32 additive bias: ALiBi, and -inf where not visible."""
    bias = torch.zeros((), device=device)
    if meta.slopes is not None:
        pos = torch.arange(k_len - q_len, k_len, device=device, dtype=torch.float32)
        dist = torch.arange(k_len, device=device, dtype=torch.float32)[None, :] - pos[:, None]
        bias = (meta.slopes.to(device)[:, None, None] * dist)[None]  # (1, H, Tq, Tk)
    mask = visible_mask(meta, q_len, k_len, device)
    return torch.where(mask, bias, float("-inf"))


def _heads_first(q, k, v):
    """(B, T, H, D) -> (B, H, T, D), key/value heads repeated to the query heads."""
    group = q.shape[2] // k.shape[2]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return q, k, v


def torch_attention(q, k, v, meta: AttentionMeta) -> torch.Tensor:
    """Reference math: the full score matrix, softmax in float32 (as transformers' MPT does)."""
    q_len, k_len = q.shape[1], k.shape[1]
    qh, kh, vh = _heads_first(q, k, v)
    scores = torch.matmul(qh, kh.transpose(-1, -2)).float() * meta.softmax_scale  # (B, H, Tq, Tk)
    scores = scores + score_bias(meta, q_len, k_len, q.device)
    # A row with no visible key (never produced by the model) gives zeros, not NaN.
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0).to(vh.dtype)
    if meta.dropout_p:
        probs = F.dropout(probs, p=meta.dropout_p)
    return torch.matmul(probs, vh).transpose(1, 2)  # (B, Tq, H, D)


def _sdpa_prepare(meta: AttentionMeta, batch: int, q_len: int, k_len: int, device, dtype=None):
    bias = score_bias(meta, q_len, k_len, device)
    return bias if dtype is None else bias.to(dtype)  # cast once, not in every layer


def sdpa_attention(q, k, v, meta: AttentionMeta) -> torch.Tensor:
    """`scaled_dot_product_attention` with the ALiBi and mask bias as a float `attn_mask`.

    The bias is an S x S tensor built once per forward and shared by the layers; with a float mask
    PyTorch picks its memory-efficient or math kernel (its FlashAttention kernel takes no bias).
    """
    q_len, k_len = q.shape[1], k.shape[1]
    bias = meta.prepared
    if bias is None:
        bias = score_bias(meta, q_len, k_len, q.device)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(
        qh,
        kh,
        vh,
        attn_mask=bias.to(q.dtype),
        dropout_p=meta.dropout_p,
        scale=meta.softmax_scale,
        enable_gqa=kh.shape[1] != qh.shape[1],
    )
    return out.transpose(1, 2)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=16)
def _causal_block_mask(q_len: int, k_len: int, device: str):
    """The plain causal block mask of a shape: the same in every forward, so built once."""
    from torch.nn.attention.flex_attention import create_block_mask

    offset = k_len - q_len

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + offset

    return create_block_mask(mask_mod, None, None, q_len, k_len, device=device)


def _flex_prepare(meta: AttentionMeta, batch: int, q_len: int, k_len: int, device, dtype=None):
    from torch.nn.attention.flex_attention import create_block_mask

    k_ids = meta.k_seq_id
    if k_ids is None:
        if torch.compiler.is_compiling():  # traced into the graph; no Python-side cache there
            return _causal_block_mask.__wrapped__(q_len, k_len, str(device))
        return _causal_block_mask(q_len, k_len, str(device))
    offset = k_len - q_len
    q_ids = meta.query_seq_id(q_len)

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx + offset) & (q_ids[b, q_idx] == k_ids[b, kv_idx])

    return create_block_mask(mask_mod, batch, None, q_len, k_len, device=str(device))


def flex_attention(q, k, v, meta: AttentionMeta) -> torch.Tensor:
    """FlexAttention with ALiBi as a `score_mod` and causal/document masking as a block mask.

    Compiled on CUDA (eager FlexAttention materializes the scores); eager on CPU, for tests.
    """
    from torch.nn.attention.flex_attention import flex_attention as eager_flex

    q_len, k_len = q.shape[1], k.shape[1]
    block_mask = meta.prepared
    if block_mask is None:
        block_mask = _flex_prepare(meta, q.shape[0], q_len, k_len, q.device)
    offset = k_len - q_len
    slopes = meta.slopes
    score_mod = None
    if slopes is not None:
        slopes = slopes.to(q.device)

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + slopes[h] * (kv_idx - q_idx - offset)

    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    kwargs = dict(
        score_mod=score_mod,
        block_mask=block_mask,
        scale=meta.softmax_scale,
        enable_gqa=kh.shape[1] != qh.shape[1],
    )
    if torch.compiler.is_compiling():  # inside a compiled block: traced into its graph
        out = eager_flex(qh, kh, vh, **kwargs)
    elif q.is_cuda:
        out = _compiled_flex()(qh, kh, vh, **kwargs)
    else:
        with warnings.catch_warnings():  # eager on CPU is deliberate (tests); no warning for it
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            out = eager_flex(qh, kh, vh, **kwargs)
    return out.transpose(1, 2)


def _flash_available() -> str | None:
    if importlib.util.find_spec("flash_attn") is None:
        return "needs flash-attn, which is not installed (pip install 'mpt[flash]')"
    return None


def flash_attention(q, k, v, meta: AttentionMeta) -> torch.Tensor:
    """flash-attn's kernel with `alibi_slopes` (bias -slope*|i-j|, equal to ALiBi when causal)."""
    from flash_attn import flash_attn_func

    slopes = meta.slopes.to(q.device, torch.float32) if meta.slopes is not None else None
    return flash_attn_func(
        q,
        k,
        v,
        dropout_p=meta.dropout_p,
        softmax_scale=meta.softmax_scale,
        causal=True,
        alibi_slopes=slopes,
    )


def _triton_available() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "needs triton, which is not installed (pip install 'mpt[triton]')"
    return None


def _triton_devices() -> tuple[str, ...]:
    # Under TRITON_INTERPRET=1 the same kernels run on CPU tensors (slowly; for tests).
    return ("cuda", "cpu") if os.environ.get("TRITON_INTERPRET") == "1" else ("cuda",)


def _triton_decoding(q_len: int, k_len: int) -> bool:
    """A few new tokens against a KV cache, no gradients: the split-KV decode kernel's case."""
    return q_len < k_len and q_len <= 16 and not torch.is_grad_enabled()


def _triton_args(meta: AttentionMeta, n_heads: int, q_len: int, device) -> tuple:
    """(slopes fp32, keyword arguments) for the kernels' API."""
    slopes = meta.slopes
    if slopes is None:  # no ALiBi: zero slopes give plain causal attention
        slopes = torch.zeros(n_heads, device=device, dtype=torch.float32)
    kw = dict(softmax_scale=meta.softmax_scale, skip_bits=meta.skip_bits)
    if meta.k_seq_id is not None:
        kw.update(q_seq_id=meta.query_seq_id(q_len), k_seq_id=meta.k_seq_id)
    return slopes.to(device, torch.float32), kw


def _triton_prepare(meta: AttentionMeta, batch: int, q_len: int, k_len: int, device, dtype=None):
    """With packed documents: the kernels' document bounds, computed once for all layers (and
    kept for their backward) instead of in every layer's forward and backward."""
    if meta.k_seq_id is None or _triton_decoding(q_len, k_len):
        return None
    from mpt import kernels

    return kernels.document_bounds(meta.query_seq_id(q_len), meta.k_seq_id)


def triton_attention(q, k, v, meta: AttentionMeta) -> torch.Tensor:
    """Our Triton ALiBi FlashAttention (mpt.kernels): forward and backward, no S x S tensor."""
    from mpt import kernels

    slopes, kw = _triton_args(meta, q.shape[2], q.shape[1], q.device)
    if _triton_decoding(q.shape[1], k.shape[1]):
        return kernels.flash_alibi_decode(q, k, v, slopes, k_norm_max=meta.k_norm_max, **kw)
    return kernels.flash_alibi_attention(q, k, v, slopes, doc_bounds=meta.prepared, **kw)


def triton_attention_packed(
    qkv, n_heads: int, n_kv_heads: int, meta: AttentionMeta
) -> torch.Tensor:
    """`triton_attention` on the fused projection's output (B, T, (H + 2 Hkv) D), no KV cache."""
    from mpt import kernels

    slopes, kw = _triton_args(meta, n_heads, qkv.shape[1], qkv.device)
    return kernels.flash_alibi_attention_packed(
        qkv, slopes, n_heads, n_kv_heads, doc_bounds=meta.prepared, **kw
    )


def _triton_head_dims() -> tuple[int, ...]:
    try:
        from mpt.kernels import SUPPORTED_HEAD_DIMS
    except ImportError:  # pragma: no cover - the kernels module is missing only in broken installs
        return ()
    return tuple(SUPPORTED_HEAD_DIMS)


_HALF = (torch.float16, torch.bfloat16)


ATTENTION: dict[str, Backend] = {
    "torch": Backend(name="torch", fn=torch_attention, caps=Capabilities(dropout=True)),
    "sdpa": Backend(
        name="sdpa", fn=sdpa_attention, caps=Capabilities(dropout=True), prepare=_sdpa_prepare
    ),
    "flex": Backend(
        name="flex",
        fn=flex_attention,
        caps=Capabilities(backward_devices=("cuda",)),
        prepare=_flex_prepare,
    ),
    "flash": Backend(
        name="flash",
        fn=flash_attention,
        caps=Capabilities(
            document_mask=False,
            padding_mask=False,
            dropout=True,
            head_dims=tuple(range(8, 257, 8)),
            devices=("cuda",),
            dtypes=_HALF,
        ),
        available=_flash_available,
    ),
    # Its capabilities depend on the environment (TRITON_INTERPRET), so they are read when asked.
    "triton": Backend(
        name="triton",
        fn=triton_attention,
        caps=lambda: Capabilities(head_dims=_triton_head_dims(), devices=_triton_devices()),
        available=_triton_available,
        prepare=_triton_prepare,
        packed=triton_attention_packed,
    ),
}
