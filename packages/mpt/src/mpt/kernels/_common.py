"""`@triton.jit` helpers shared by the forward, backward and decode kernels (`_fwd.py`,
`_bwd.py`, `_decode.py`): tile loads, a query block's program ids, the causal/document score mask,
and the start of the key loop under the ALiBi skip and the document skip (their math is in
`_fwd.py`'s docstring). Triton inlines them into the kernels that call them.
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
def mask_scores(
    s, cols, col_ok, pos, q_id, ks_base, stride_kst, MASKED: tl.constexpr, HAS_SEQ: tl.constexpr
):
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
def diagonal_bound(
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
    HAS_SEQ: tl.constexpr,
):
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
