"""Forward Triton kernels of the causal ALiBi FlashAttention (helpers shared in `_common.py`).

`fwd_kernel` computes, for one block of query rows of one (batch, head), the output and the
natural-log log-sum-exp of

    score_ij = sm_scale * q_i . k_j - slope_h * (pos_i - j),    pos_i = i + (Tk - Tq),

over the keys j <= pos_i (and with the same sequence id when `HAS_SEQ`). Layout: q (B, Tq, H, D),
k and v (B, Tk, Hkv, D) with strides given (last dim contiguous), out (B, Tq, H, D), lse (B, H, Tq).

Numerics (FlashAttention-2 online softmax, in base 2): inside the key loop the score is
`qk * qk_scale + slope2 * (j - p0)` with `p0` = pos of the block's first row; the per-row part
`-slope2 * (pos_i - p0)` is constant along a row, cancels in the softmax and is put back into the
lse at the end. So the off-diagonal blocks pay one FMA for ALiBi and no mask arithmetic; the
diagonal blocks add the causal mask (`MASKED`); packed documents (`HAS_SEQ`) mask every block.

Document skip (`HAS_SEQ`): `FirstKey[b, i]` (from the launcher) is the first key row i can see
(pos_i + 1 if none); the key loop starts at the block holding the smallest one over the block's
rows, since every key below it belongs to other documents for all of them.

ALiBi block skip (`SKIP`): with Kmax = max_j ||k_j|| and m_i >= s_{i,pos_i},
    s_ij - m_i <= sm_scale * (||q_i|| Kmax - q_i . k_{pos_i}) - slope * (pos_i - j),
so keys farther than (bound + skip_bits ln 2) / slope behind every row of the block have a
softmax weight below 2^-skip_bits and the key loop starts after them (`skip_start`).
"""

import triton
import triton.language as tl

from ._common import (
    LN2,
    LOG2E,
    diagonal_bound,
    doc_start,
    load_tile,
    mask_scores,
    query_block,
    row_tile,
    skip_start,
)

# Lengths and the strides that follow them (the sequence ids' rows) vary from call to call in
# evaluation and generation; Triton would compile a variant per value class (1, a multiple of 16,
# other) of each. Not specialized, one compiled kernel serves every length: the loads along the
# head dim stay vectorized (its strides are still specialized), and the tile masks along the
# rows cost the same (tools/bench/RESULTS.md, session 25). The backward kernels (training: one
# shape) keep Triton's defaults.
_LENGTHS = ["Tq", "Tk", "stride_qsb", "stride_ksb"]


@triton.jit(do_not_specialize=["Tk"])
def key_norm_max_kernel(
    K,
    Out,
    stride_kb,
    stride_kt,
    stride_kh,
    Hkv,
    Tk,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """Out[(b*Hkv + hkv), t_block] = max over the block's keys of ||k||_2 (fp32), no fp32 copy of K."""
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hkv
    hkv = pid_bh % Hkv
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    ptrs = K + b.to(tl.int64) * stride_kb + hkv * stride_kh
    ptrs = ptrs + offs_t[:, None] * stride_kt + offs_d[None, :]
    mask = (offs_t[:, None] < Tk) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    norm = tl.sqrt(tl.sum(k * k, 1))
    tl.store(Out + pid_bh * tl.num_programs(0) + pid_t, tl.max(norm, 0))


@triton.jit(do_not_specialize=_LENGTHS)
def fwd_kernel(
    Q,
    K,
    V,
    Slopes,
    Out,
    Lse,
    QSeq,
    KSeq,
    FirstKey,
    KNormMax,
    RowBound,
    KvStart,
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
    stride_ob,
    stride_ot,
    stride_oh,
    stride_qsb,
    stride_qst,
    stride_ksb,
    stride_kst,
    H,
    Tq,
    Tk,
    TQ_BUCKET,
    TK_BUCKET,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_SEQ: tl.constexpr,
    SKIP: tl.constexpr,
    STORE_KV_START: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Grid (cdiv(Tq, BLOCK_M), B * H); the last (heaviest) query blocks are launched first."""
    pid_m, pid_bh, b, h, hkv, offs_m, pos, p0 = query_block(H, Tq, Tk, GROUP, BLOCK_M)
    b64 = b.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < Tq
    io_mask = row_ok[:, None] & (offs_d < HEAD_DIM)[None, :]

    q = row_tile(Q + b64 * stride_qb + h * stride_qh, offs_m, stride_qt, offs_d, io_mask)
    if UPCAST:  # the interpreter multiplies bf16 dot operands wrongly
        q = q.to(tl.float32)
    k_base = K + b64 * stride_kb + hkv * stride_kh
    v_base = V + b64 * stride_vb + hkv * stride_vh
    ks_base = KSeq + b64 * stride_ksb
    q_id = offs_m
    if HAS_SEQ:
        q_id = tl.load(QSeq + b64 * stride_qsb + offs_m * stride_qst, mask=row_ok, other=0)
    slope = tl.load(Slopes + h)
    slope2 = slope * LOG2E
    qk_scale = sm_scale * LOG2E

    n_full = ((p0 + 1) // BLOCK_N) * BLOCK_N  # keys below this are visible to every row
    hi = tl.minimum(p0 + BLOCK_M, Tk)
    lo = 0
    if SKIP:
        k_norm_max = tl.load(KNormMax + b * (H // GROUP) + hkv)
        bound, q_norm = diagonal_bound(
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
        lo = tl.minimum(skip_start(pos, bound, slope, skip_nats, row_ok, BLOCK_N), n_full)
    mask_lo = n_full
    if HAS_SEQ:  # keys below every row's first visible key: other documents
        lo = tl.maximum(lo, doc_start(FirstKey + b64 * Tq, offs_m, row_ok, Tk, BLOCK_N))
        mask_lo = tl.maximum(lo, n_full)  # the start may lie past the unmasked blocks
    if STORE_KV_START:
        tl.store(KvStart + pid_bh * tl.num_programs(0) + pid_m, lo)

    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    # The key blocks [lo, n_full) that every row sees whole, then the diagonal blocks
    # [mask_lo, hi) with the causal mask and key bounds (MASKED); online softmax in base 2.
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < HEAD_DIM
    for sweep in tl.static_range(2):
        MASKED = sweep == 1
        for start_n in range(mask_lo if MASKED else lo, hi if MASKED else n_full, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            cols = start_n + offs_n
            col_ok = cols < Tk
            k_ptrs = k_base + cols[None, :] * stride_kt + offs_d[:, None]
            kT = load_tile(k_ptrs, d_ok[:, None], col_ok[None, :], BLOCK_D != HEAD_DIM, MASKED)
            if UPCAST:
                kT = kT.to(tl.float32)
            qk = tl.dot(q, kT, input_precision=DOT_PREC)  # (BLOCK_M, BLOCK_N) fp32
            s = qk * qk_scale + (slope2 * (cols - p0).to(tl.float32))[None, :]
            s = mask_scores(s, cols, col_ok, pos, q_id, ks_base, stride_kst, MASKED, HAS_SEQ)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            if HAS_SEQ:  # a row may have seen no key yet: keep exp2 away from (-inf) - (-inf)
                m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            else:
                m_use = m_new
            p = tl.exp2(s - m_use[:, None])
            alpha = tl.exp2(m_i - m_use)
            l_i = l_i * alpha + tl.sum(p, 1)
            v_ptrs = v_base + cols[:, None] * stride_vt + offs_d[None, :]
            v = load_tile(v_ptrs, col_ok[:, None], d_ok[None, :], MASKED, BLOCK_D != HEAD_DIM)
            if UPCAST:
                v = v.to(tl.float32)
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
            m_i = m_new

    if HAS_SEQ:  # rows that saw no key: output 0, lse -inf
        empty = l_i == 0.0
        l_div = tl.where(empty, 1.0, l_i)
        lse2 = tl.where(empty, float("-inf"), m_i + tl.log2(l_div))
    else:
        l_div = l_i
        lse2 = m_i + tl.log2(l_i)
    out = acc * (1.0 / l_div)[:, None]
    lse = (lse2 - slope2 * (pos - p0).to(tl.float32)) * LN2
    tl.store(
        Out + b64 * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
        out.to(Out.dtype.element_ty),
        mask=io_mask,
    )
    lse_offs = pid_bh.to(tl.int64) * Tq + offs_m
    tl.store(Lse + lse_offs, lse, mask=row_ok)
    if SKIP:  # per-row bound on log p_ij + slope*d for the backward's skip
        row_bound = sm_scale * q_norm * k_norm_max - lse
        row_bound = tl.where(lse == float("-inf"), float("-inf"), row_bound)
        tl.store(RowBound + lse_offs, row_bound, mask=row_ok)
