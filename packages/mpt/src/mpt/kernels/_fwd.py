"""Forward Triton kernels of the causal ALiBi FlashAttention, and the helpers the other kernels share.

`fwd_kernel` computes, for one block of query rows of one (batch, head), the output and the
natural-log log-sum-exp of

    score_ij = sm_scale * q_i . k_j - slope_h * (pos_i - j),    pos_i = i + (Tk - Tq),

over the keys j <= pos_i (and with the same sequence id when `HAS_SEQ`). Layout: q (B, Tq, H, D),
k and v (B, Tk, Hkv, D) with strides given (last dim contiguous), out (B, Tq, H, D), lse (B, H, Tq).

Numerics (FlashAttention-2 online softmax, in base 2): inside the key loop the score is
`qk * qk_scale + slope2 * (j - ref)` with `ref` = pos of the block's first row; the per-row part
`-slope2 * (pos_i - ref)` is constant along a row, cancels in the softmax and is put back into the
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

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def load_tile(ptrs, ok0, ok1, CHECK0: tl.constexpr, CHECK1: tl.constexpr):
    """Load a 2-D tile; `ok0`/`ok1` are the bounds of dims 0/1, checked only where asked (constexpr)."""
    if CHECK0 and CHECK1:
        x = tl.load(ptrs, mask=ok0 & ok1, other=0.0)
    elif CHECK0:
        x = tl.load(ptrs, mask=ok0, other=0.0)
    elif CHECK1:
        x = tl.load(ptrs, mask=ok1, other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def row_tile(base, rows, stride_t, offs_d, mask):
    """The (rows, D) tile at `base + rows * stride_t + d`, 0 where `mask` is false."""
    return tl.load(base + rows[:, None] * stride_t + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def query_block(H, Tq, Tk, GROUP: tl.constexpr, BLOCK_M: tl.constexpr):
    """This program's block of query rows (the heaviest, last, blocks are launched first) and its
    (batch, head): (pid_m, pid_bh, b, h, hkv, offs_m, pos, p0), with `pos` the rows' absolute
    positions (bottom-right aligned) and `p0` the first row's."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    return pid_m, pid_bh, b, h, h // GROUP, offs_m, offs_m + (Tk - Tq), start_m + (Tk - Tq)


@triton.jit
def mask_scores(s, cols, col_ok, pos, q_id, ks_base, stride_kst,
                MASKED: tl.constexpr, HAS_SEQ: tl.constexpr):  # fmt: skip
    """Scores (rows x keys) with -inf where the causal mask (MASKED: the diagonal blocks) or the
    documents (HAS_SEQ) hide the key. Unmasked blocks hold only keys inside the sequence."""
    if MASKED:
        s = tl.where(cols[None, :] <= pos[:, None], s, float("-inf"))
    if HAS_SEQ:
        if MASKED:
            k_id = tl.load(ks_base + cols * stride_kst, mask=col_ok, other=0)
        else:
            k_id = tl.load(ks_base + cols * stride_kst)
        s = tl.where(q_id[:, None] == k_id[None, :], s, float("-inf"))
    return s


@triton.jit
def diagonal_bound(q, k_base, ks_base, pos, q_id, row_ok, io_mask, offs_d, stride_kt, stride_kst,
                   sm_scale, k_norm_max, HAS_SEQ: tl.constexpr):  # fmt: skip
    """The ALiBi skip's per-row bound (natural units) sm_scale * (||q_i|| Kmax - q_i . k_{pos_i})
    on s_ij - m_i + slope * (pos_i - j), +inf where the diagonal key is in another document (it
    then bounds nothing); and ||q_i||."""
    qf = q.to(tl.float32)
    q_norm = tl.sqrt(tl.sum(qf * qf, 1))
    k_diag = row_tile(k_base, pos, stride_kt, offs_d, io_mask).to(tl.float32)
    bound = sm_scale * (q_norm * k_norm_max - tl.sum(qf * k_diag, 1))
    if HAS_SEQ:
        diag_id = tl.load(ks_base + pos * stride_kst, mask=row_ok, other=0)
        bound = tl.where(diag_id == q_id, bound, float("inf"))
    return bound, q_norm


@triton.jit
def skip_start(pos, bound, slope, skip_nats, row_ok, BLOCK_N: tl.constexpr):
    """First key block any row still needs: a row drops keys with slope*(pos-j) > bound + skip_nats.

    `bound` is per row (natural units); +inf means "needs every key", -inf "needs none". Rows
    outside the sequence (`row_ok` false) need none. Returns a multiple of BLOCK_N, >= 0.
    """
    reach = (bound + skip_nats) / slope
    first = pos.to(tl.float32) - reach - 1.0
    first = tl.where(slope > 0.0, first, 0.0)  # no ALiBi (or a negative slope): no skipping
    first = tl.where(first == first, first, 0.0)  # NaN (non-finite inputs): no skipping
    first = tl.where(row_ok, first, float("inf"))
    lo = tl.min(first, 0)
    lo = tl.where(lo > 0.0, lo, 0.0)
    lo = tl.minimum(lo, 1.0e9).to(tl.int32)
    return (lo // BLOCK_N) * BLOCK_N


@triton.jit
def doc_start(first_key_base, offs_m, row_ok, Tk, BLOCK_N: tl.constexpr):
    """Start of the key block holding the smallest first visible key of the block's rows."""
    first = tl.load(first_key_base + offs_m, mask=row_ok, other=Tk)
    return (tl.min(first, 0) // BLOCK_N) * BLOCK_N


@triton.jit
def key_norm_max_kernel(
    K, Out, stride_kb, stride_kt, stride_kh, Hkv, Tk,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
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


@triton.jit
def _fwd_inner(
    acc, l_i, m_i, q, q_id, pos, ref, k_base, v_base, ks_base,
    stride_kt, stride_vt, stride_kst, lo, hi, Tk, qk_scale, slope2,
    MASKED: tl.constexpr, HAS_SEQ: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Online softmax over key blocks [lo, hi); MASKED adds the causal mask and key bounds."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        col_ok = cols < Tk
        kT = load_tile(
            k_base + cols[None, :] * stride_kt + offs_d[:, None],
            d_ok[:, None], col_ok[None, :], BLOCK_D != HEAD_DIM, MASKED,
        )  # fmt: skip
        if UPCAST:
            kT = kT.to(tl.float32)
        qk = tl.dot(q, kT, input_precision=DOT_PREC)  # (BLOCK_M, BLOCK_N) fp32
        s = qk * qk_scale + (slope2 * (cols - ref).to(tl.float32))[None, :]
        s = mask_scores(s, cols, col_ok, pos, q_id, ks_base, stride_kst, MASKED, HAS_SEQ)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if HAS_SEQ:  # a row may have seen no key yet: keep exp2 away from (-inf) - (-inf)
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_use = m_new
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = load_tile(
            v_base + cols[:, None] * stride_vt + offs_d[None, :],
            col_ok[:, None], d_ok[None, :], MASKED, BLOCK_D != HEAD_DIM,
        )  # fmt: skip
        if UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def fwd_kernel(
    Q, K, V, Slopes, Out, Lse, QSeq, KSeq, FirstKey, KNormMax, RowBound, KvStart,
    sm_scale, skip_nats,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh,
    stride_qsb, stride_qst, stride_ksb, stride_kst,
    H, Tq, Tk, TQ_BUCKET, TK_BUCKET,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_SEQ: tl.constexpr, SKIP: tl.constexpr, STORE_KV_START: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
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
            q, k_base, ks_base, pos, q_id, row_ok, io_mask, offs_d, stride_kt, stride_kst,
            sm_scale, k_norm_max, HAS_SEQ,
        )  # fmt: skip
        lo = tl.minimum(skip_start(pos, bound, slope, skip_nats, row_ok, BLOCK_N), n_full)
    mask_lo = n_full
    if HAS_SEQ:  # keys below every row's first visible key: other documents
        lo = tl.maximum(lo, doc_start(FirstKey + b64 * Tq, offs_m, row_ok, Tk, BLOCK_N))
        mask_lo = tl.maximum(lo, n_full)  # the start may lie past the unmasked blocks
    if STORE_KV_START:
        tl.store(KvStart + pid_bh * tl.num_programs(0) + pid_m, lo)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, q_id, pos, p0, k_base, v_base, ks_base,
        stride_kt, stride_vt, stride_kst, lo, n_full, Tk, qk_scale, slope2,
        False, HAS_SEQ, UPCAST, DOT_PREC, HEAD_DIM, BLOCK_D, BLOCK_N,
    )  # fmt: skip
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, q_id, pos, p0, k_base, v_base, ks_base,
        stride_kt, stride_vt, stride_kst, mask_lo, hi, Tk, qk_scale, slope2,
        True, HAS_SEQ, UPCAST, DOT_PREC, HEAD_DIM, BLOCK_D, BLOCK_N,
    )  # fmt: skip

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
        out.to(Out.dtype.element_ty), mask=io_mask,
    )  # fmt: skip
    lse_offs = pid_bh.to(tl.int64) * Tq + offs_m
    tl.store(Lse + lse_offs, lse, mask=row_ok)
    if SKIP:  # per-row bound on log p_ij + slope*d for the backward's skip
        row_bound = sm_scale * q_norm * k_norm_max - lse
        row_bound = tl.where(lse == float("-inf"), float("-inf"), row_bound)
        tl.store(RowBound + lse_offs, row_bound, mask=row_ok)
