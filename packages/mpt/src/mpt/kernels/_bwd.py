"""Backward Triton kernels of the causal ALiBi FlashAttention: preprocess, dK/dV and dQ.

With P = softmax(score) recomputed from the forward's lse (p_ij = exp(score_ij - lse_i)),
dP = dO V^T, delta_i = rowsum(dO_i * O_i) and dS = P * (dP - delta):

    dV = P^T dO,   dK = sm_scale * dS^T Q,   dQ = sm_scale * dS K.

* `preprocess_kernel`: delta (B, H, Tq) fp32.
* `dkdv_kernel`: one program per key block of one (batch, kv head); for grouped-query heads it
  loops over the query heads of its group and accumulates in registers (no atomics). Query rows
  run from the first row that sees the block (masked, diagonal blocks first) to the end.
* `dq_kernel`: one program per query block, key blocks as in the forward.

ALiBi skip (`SKIP`): p_ij <= exp(c_i - slope * (pos_i - j)) with c_i = sm_scale ||q_i|| Kmax - lse_i.
The dQ kernel bounds its rows with c_i (recomputed from q and lse) and starts its key loop after
the keys no row needs; the dK/dV kernel gets max_i c_i per (batch, head) (`ColBound`, written by
the forward) and stops its query loop where every p_ij < 2^-skip_bits. Skipped p_ij are exactly 0
in fp32 for skip_bits >= 150, so the gradients do not change at all.

Document skip (`HAS_SEQ`): the dQ kernel starts its key loop as the forward does (`FirstKey`);
the dK/dV kernel ends its query loop after the last row that sees any key of its block in the
key's document (`LastRow[b, j]`, -1 if none), both from the launcher.
"""

import triton
import triton.language as tl

from ._common import LOG2E, doc_start, load_tile, mask_scores, query_block, row_tile, skip_start


@triton.jit
def preprocess_kernel(
    Out,
    DO,
    Delta,
    stride_ob,
    stride_ot,
    stride_oh,
    stride_dob,
    stride_dot,
    stride_doh,
    H,
    Tq,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """delta[b, h, i] = sum_d dO[b, i, h, d] * O[b, i, h, d]; grid (cdiv(Tq, BLOCK_M), B * H)."""
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < Tq) & (offs_d[None, :] < HEAD_DIM)
    o = row_tile(Out + b * stride_ob + h * stride_oh, rows, stride_ot, offs_d, mask).to(tl.float32)
    do = row_tile(DO + b * stride_dob + h * stride_doh, rows, stride_dot, offs_d, mask)
    do = do.to(tl.float32)
    tl.store(Delta + pid_bh.to(tl.int64) * Tq + rows, tl.sum(o * do, 1), mask=rows < Tq)


@triton.jit
def dkdv_kernel(
    Q,
    K,
    V,
    DO,
    Slopes,
    Lse,
    Delta,
    QSeq,
    KSeq,
    LastRow,
    ColBound,
    DK,
    DV,
    QEnd,
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
    stride_dob,
    stride_dot,
    stride_doh,
    stride_dkb,
    stride_dkt,
    stride_dkh,
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
    STORE_Q_END: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Grid (cdiv(Tk, BLOCK_N), B * Hkv). dK, dV share the layout (B, Tk, Hkv, D), dK's strides."""
    pid_n = tl.program_id(0)
    pid_bkv = tl.program_id(1)
    Hkv = H // GROUP
    b = pid_bkv // Hkv
    hkv = pid_bkv % Hkv
    b64 = b.to(tl.int64)
    n0 = pid_n * BLOCK_N
    cols = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = cols < Tk
    d_ok = offs_d < HEAD_DIM
    kv_mask = col_ok[:, None] & d_ok[None, :]
    k = row_tile(K + b64 * stride_kb + hkv * stride_kh, cols, stride_kt, offs_d, kv_mask)
    v = row_tile(V + b64 * stride_vb + hkv * stride_vh, cols, stride_vt, offs_d, kv_mask)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    k_id = cols
    if HAS_SEQ:
        k_id = tl.load(KSeq + b64 * stride_ksb + cols * stride_kst, mask=col_ok, other=0)
    qs_base = QSeq + b64 * stride_qsb
    qk_scale = sm_scale * LOG2E

    # Rows i see key j iff i >= j - (Tk - Tq). Rows below n0 + BLOCK_N - 1 - (Tk - Tq) need the
    # causal mask; they come first, in steps of BLOCK_M from the first row that sees the block.
    first = tl.maximum(n0 - (Tk - Tq), 0)
    n_masked = tl.maximum(n0 + BLOCK_N - 1 - (Tk - Tq), 0) - first
    mask_end = first + tl.cdiv(n_masked, BLOCK_M) * BLOCK_M
    doc_end = Tq
    if HAS_SEQ:  # rows after the last one that sees a key of the block: other documents
        last = tl.load(LastRow + b64 * Tk + cols, mask=col_ok, other=-1)
        doc_end = tl.max(last, 0) + 1

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    offs_m = tl.arange(0, BLOCK_M)
    for g in range(GROUP):
        h = hkv * GROUP + g
        slope = tl.load(Slopes + h)
        slope2 = slope * LOG2E
        bh = b64 * H + h
        q_base = Q + b64 * stride_qb + h * stride_qh
        do_base = DO + b64 * stride_dob + h * stride_doh
        end = Tq
        if SKIP:  # last row with p_ij >= 2^-skip_bits for some key of the block, plus margin
            reach = (tl.load(ColBound + bh) + skip_nats) / slope
            lim = (n0 + BLOCK_N + 1 - (Tk - Tq)).to(tl.float32) + reach
            lim = tl.where(slope > 0.0, lim, Tq)
            lim = tl.where(lim < Tq, lim, Tq)  # also NaN -> Tq
            lim = tl.where(lim > 0.0, lim, 0.0)
            end = lim.to(tl.int32)
        end = tl.minimum(end, doc_end)
        if STORE_Q_END:
            tl.store(QEnd + (pid_bkv * GROUP + g) * tl.num_programs(0) + pid_n, end)
        lse_base = Lse + bh * Tq
        delta_base = Delta + bh * Tq
        diag_end = tl.minimum(mask_end, doc_end)
        col_bias = slope2 * (cols - n0).to(tl.float32)  # (BLOCK_N,)
        # The rows [first, mask_end) that need the causal mask (MASKED), then [mask_end, end),
        # neither past doc_end; dK and dV accumulate transposed (keys x queries).
        for sweep in tl.static_range(2):
            MASKED = sweep == 0
            lo = first if MASKED else mask_end
            hi = diag_end if MASKED else end
            for start_m in range(lo, hi, BLOCK_M):
                rows = start_m + offs_m
                row_ok = rows < Tq
                q_ptrs = q_base + rows[None, :] * stride_qt + offs_d[:, None]
                qT = tl.load(q_ptrs, mask=d_ok[:, None] & row_ok[None, :], other=0.0)
                do = row_tile(do_base, rows, stride_dot, offs_d, row_ok[:, None] & d_ok[None, :])
                if UPCAST:
                    qT = qT.to(tl.float32)
                    do = do.to(tl.float32)
                lse = tl.load(lse_base + rows, mask=row_ok, other=float("inf"))  # +inf: p = 0
                if HAS_SEQ:
                    lse = tl.where(lse == float("-inf"), float("inf"), lse)  # rows that saw no key
                delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
                pos = rows + (Tk - Tq)
                row_term = lse * LOG2E + slope2 * (pos - n0).to(tl.float32)  # (BLOCK_M,)
                qkT = tl.dot(k, qT, input_precision=DOT_PREC)  # (BLOCK_N, BLOCK_M)
                sT = qkT * qk_scale + col_bias[:, None] - row_term[None, :]  # log2 p, transposed
                if MASKED:
                    sT = tl.where(cols[:, None] <= pos[None, :], sT, float("-inf"))
                if HAS_SEQ:
                    q_id = tl.load(qs_base + rows * stride_qst, mask=row_ok, other=0)
                    sT = tl.where(k_id[:, None] == q_id[None, :], sT, float("-inf"))
                pT = tl.exp2(sT)
                dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PREC)
                dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
                dsT = pT * (dpT - delta[None, :])
                dk = tl.dot(dsT.to(qT.dtype), tl.trans(qT), dk, input_precision=DOT_PREC)

    out_offs = b64 * stride_dkb + hkv * stride_dkh + cols[:, None] * stride_dkt + offs_d[None, :]
    tl.store(DK + out_offs, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out_offs, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def dq_kernel(
    Q,
    K,
    V,
    DO,
    Slopes,
    Lse,
    Delta,
    QSeq,
    KSeq,
    FirstKey,
    KNormMax,
    DQ,
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
    stride_dob,
    stride_dot,
    stride_doh,
    stride_dqb,
    stride_dqt,
    stride_dqh,
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
    do = row_tile(DO + b64 * stride_dob + h * stride_doh, offs_m, stride_dot, offs_d, io_mask)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse_offs = pid_bh.to(tl.int64) * Tq + offs_m
    lse = tl.load(Lse + lse_offs, mask=row_ok, other=float("inf"))
    delta = tl.load(Delta + lse_offs, mask=row_ok, other=0.0)
    q_id = offs_m
    if HAS_SEQ:
        q_id = tl.load(QSeq + b64 * stride_qsb + offs_m * stride_qst, mask=row_ok, other=0)
    slope = tl.load(Slopes + h)
    slope2 = slope * LOG2E
    qk_scale = sm_scale * LOG2E
    lse_use = lse
    if HAS_SEQ:
        lse_use = tl.where(lse == float("-inf"), float("inf"), lse)  # rows that saw no key: p = 0
    row_term = lse_use * LOG2E + slope2 * (pos - p0).to(tl.float32)

    n_full = ((p0 + 1) // BLOCK_N) * BLOCK_N
    hi = tl.minimum(p0 + BLOCK_M, Tk)
    lo = 0
    if SKIP:
        qf = q.to(tl.float32)
        q_norm = tl.sqrt(tl.sum(qf * qf, 1))
        k_norm_max = tl.load(KNormMax + b * (H // GROUP) + hkv)
        bound = sm_scale * q_norm * k_norm_max - lse  # lse = -inf rows: +inf, fixed below
        bound = tl.where(lse == float("-inf"), float("-inf"), bound)
        lo = tl.minimum(skip_start(pos, bound, slope, skip_nats, row_ok, BLOCK_N), n_full)
    mask_lo = n_full
    if HAS_SEQ:  # keys below every row's first visible key: other documents
        lo = tl.maximum(lo, doc_start(FirstKey + b64 * Tq, offs_m, row_ok, Tk, BLOCK_N))
        mask_lo = tl.maximum(lo, n_full)  # the start may lie past the unmasked blocks
    if STORE_KV_START:
        tl.store(KvStart + pid_bh * tl.num_programs(0) + pid_m, lo)

    k_base = K + b64 * stride_kb + hkv * stride_kh
    v_base = V + b64 * stride_vb + hkv * stride_vh
    ks_base = KSeq + b64 * stride_ksb
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # The key blocks [lo, n_full) that every row sees whole, then the diagonal blocks
    # [mask_lo, hi) with the causal mask and key bounds (MASKED).
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
            v_ptrs = v_base + cols[None, :] * stride_vt + offs_d[:, None]
            vT = load_tile(v_ptrs, d_ok[:, None], col_ok[None, :], BLOCK_D != HEAD_DIM, MASKED)
            if UPCAST:
                kT = kT.to(tl.float32)
                vT = vT.to(tl.float32)
            qk = tl.dot(q, kT, input_precision=DOT_PREC)  # (BLOCK_M, BLOCK_N)
            s = qk * qk_scale + (slope2 * (cols - p0).to(tl.float32))[None, :] - row_term[:, None]
            s = mask_scores(s, cols, col_ok, pos, q_id, ks_base, stride_kst, MASKED, HAS_SEQ)
            p = tl.exp2(s)  # p_ij = exp(score_ij - lse_i)
            dp = tl.dot(do, vT, input_precision=DOT_PREC)
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq, input_precision=DOT_PREC)
    tl.store(
        DQ + b64 * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqt + offs_d[None, :],
        (dq * sm_scale).to(DQ.dtype.element_ty),
        mask=io_mask,
    )
