"""Decode (inference) Triton kernels of the causal ALiBi attention: split-KV, then a combine.

A few query tokens (Tq, typically 1) attend to a long KV cache. The work is split along the keys
so that enough programs run: `split_kernel` handles one key range of one (batch, kv head) for all
the query heads of its group at once (rows = GROUP * Tq pairs (head, token), so multi-query
attention fills the tensor-core tiles), and writes a normalized partial output and its base-2
log-sum-exp. `combine_kernel` merges the splits of each (batch, token, head) row.

Every key block is fully masked (key bounds, causal, sequence ids): decode is bound by reading
the cache, not by arithmetic. The ALiBi skip works as in the forward (see `_fwd.py`), per row
with each row's own slope; splits that lie wholly before the keys any row needs do nothing.
"""

import triton
import triton.language as tl

from ._common import LOG2E, diagonal_bound, row_tile, skip_start


@triton.jit(do_not_specialize=["Tq", "Tk", "split_len", "n_split", "stride_qsb", "stride_ksb"])
def split_kernel(
    Q,
    K,
    V,
    Slopes,
    QSeq,
    KSeq,
    KNormMax,
    OPart,
    LsePart,
    sm_scale,
    skip_nats,
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_qsb,
    stride_qst,
    stride_ksb,
    stride_kst,
    H,
    Tq,
    Tk,
    split_len,
    n_split,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_SEQ: tl.constexpr,
    SKIP: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Grid (n_split, B * Hkv, cdiv(GROUP * Tq, BLOCK_M)); OPart (B, H, Tq, n_split, D) fp32."""
    pid_s = tl.program_id(0)
    pid_bkv = tl.program_id(1)
    Hkv = H // GROUP
    b = pid_bkv // Hkv
    hkv = pid_bkv % Hkv
    b64 = b.to(tl.int64)
    r = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)  # row = (head in group, token)
    row_ok = r < GROUP * Tq
    t = r % Tq
    h = hkv * GROUP + r // Tq
    pos = t + (Tk - Tq)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < HEAD_DIM
    io_mask = row_ok[:, None] & d_ok[None, :]

    q_ptrs = Q + b64 * stride_qb + t[:, None] * stride_qt + h[:, None] * stride_qh
    q = tl.load(q_ptrs + offs_d[None, :], mask=io_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    slope = tl.load(Slopes + h, mask=row_ok, other=1.0)
    slope2 = slope * LOG2E
    qk_scale = sm_scale * LOG2E
    k_base = K + b64 * stride_kb + hkv * stride_kh
    v_base = V + b64 * stride_vb + hkv * stride_vh
    ks_base = KSeq + b64 * stride_ksb
    q_id = t
    if HAS_SEQ:
        q_id = tl.load(QSeq + b64 * stride_qsb + t * stride_qst, mask=row_ok, other=0)

    lo = pid_s * split_len
    hi = tl.minimum(lo + split_len, Tk)
    if SKIP:
        k_norm_max = tl.load(KNormMax + b * Hkv + hkv)
        bound, _ = diagonal_bound(
            q,
            k_base,
            ks_base,
            pos,
            q_id,
            row_ok,
            io_mask,
            offs_d,
            stride_kt,
            stride_kst,
            sm_scale,
            k_norm_max,
            HAS_SEQ,
        )
        lo = tl.maximum(lo, skip_start(pos, bound, slope, skip_nats, row_ok, BLOCK_N))

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < hi
        k_ptrs = k_base + cols[None, :] * stride_kt + offs_d[:, None]
        kT = tl.load(k_ptrs, mask=col_ok[None, :] & d_ok[:, None], other=0.0)
        v = row_tile(v_base, cols, stride_vt, offs_d, col_ok[:, None] & d_ok[None, :])
        if UPCAST:
            kT = kT.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, kT, input_precision=DOT_PREC) * qk_scale
        s = s - slope2[:, None] * (pos[:, None] - cols[None, :]).to(tl.float32)
        visible = col_ok[None, :] & (cols[None, :] <= pos[:, None])
        if HAS_SEQ:
            k_id = tl.load(ks_base + cols * stride_kst, mask=col_ok, other=0)
            visible = visible & (q_id[:, None] == k_id[None, :])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PREC)
        m_i = m_new

    empty = l_i == 0.0
    out = acc * (1.0 / tl.where(empty, 1.0, l_i))[:, None]
    lse2 = tl.where(empty, float("-inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    part = ((b64 * H + h) * Tq + t) * n_split + pid_s  # (BLOCK_M,)
    tl.store(OPart + part[:, None] * HEAD_DIM + offs_d[None, :], out, mask=io_mask)
    tl.store(LsePart + part, lse2, mask=row_ok)


@triton.jit(do_not_specialize=["Tq", "n_split"])
def combine_kernel(
    OPart,
    LsePart,
    Out,
    stride_ob,
    stride_ot,
    stride_oh,
    H,
    Tq,
    n_split,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Grid (B * H * Tq,): out[b, t, h] = sum_s w_s o_s / sum_s w_s, w_s = 2^(lse_s - max lse)."""
    row = tl.program_id(0).to(tl.int64)  # = (b * H + h) * Tq + t
    t = row % Tq
    h = (row // Tq) % H
    b = row // (Tq * H)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < n_split
    d_ok = offs_d < HEAD_DIM
    lse = tl.load(LsePart + row * n_split + offs_s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    w = tl.exp2(lse - tl.where(m == float("-inf"), 0.0, m))  # all empty: every w = 0
    o = tl.load(
        OPart + (row * n_split + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
        mask=s_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    w_sum = tl.sum(w, 0)
    out = tl.sum(w[:, None] * o, 0) / tl.where(w_sum == 0.0, 1.0, w_sum)
    tl.store(
        Out + b * stride_ob + t * stride_ot + h * stride_oh + offs_d,
        out.to(Out.dtype.element_ty),
        mask=d_ok,
    )
