"""From a model's logits to per-request scores: the numerics every scoring path shares.

A request is scored on the logits of the positions that predict its continuation tokens. Rows of
a forward hold token ids at known absolute positions of their sequence (`Row`); `locate` finds
the columns a request's targets are predicted at, and builds the `keep` mask of the positions
whose logits are wanted (the only ones computed when the model takes `logits_to_keep`).
`accumulate` then takes, per kept position, one log-sum-exp and one max in float32, and per
target token its log-probability (logit - logsumexp), whether it is the argmax, and its margin
to the best other token; sums over a request's tokens are kept in float64.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from evalkit.protocols import supports_packing, supports_prefix_cache

__all__ = [
    "ModelCall",
    "Request",
    "Row",
    "Score",
    "Sums",
    "accumulate",
    "finish",
    "forward_logits",
    "inspect_model",
    "locate",
    "pad_rows",
    "requests_of",
]


@dataclass(frozen=True)
class Request:
    """Token ids of a context (already left-truncated to the window) and its continuation."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclass(frozen=True)
class Score:
    """A continuation's log-likelihood (float64 sum of fp32 log-probs), whether every token is
    the argmax, the smallest (target logit - best other logit), and its token count."""

    logprob: float
    greedy: bool
    margin: float
    n_tokens: int


@dataclass(frozen=True)
class ModelCall:
    """What a model accepts, read once: keyword arguments of forward, optional contracts."""

    attention_mask: bool
    logits_to_keep: bool
    prefix_cache: bool
    packed: bool
    device: torch.device


def inspect_model(model: torch.nn.Module) -> ModelCall:
    """The keyword arguments evalkit may pass to `model` and the device of its inputs."""
    try:
        names = set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        names = set()
    from composer_lite.parallel import is_sharded

    param = next(iter(model.parameters()), None)
    return ModelCall(
        attention_mask="attention_mask" in names,
        logits_to_keep="logits_to_keep" in names,
        prefix_cache=supports_prefix_cache(model) and "past_key_values" in names,
        # forward_packed is not forward: FSDP2 would not gather a sharded model's parameters
        packed=supports_packing(model) and not is_sharded(model),
        device=param.device if param is not None else torch.device("cpu"),
    )


def forward_logits(
    model, call: ModelCall, ids, *, mask=None, keep=None, cache=None
) -> torch.Tensor:
    """Logits of the kept positions, flat (N, V) in row-major order (all positions without keep)."""
    kwargs: dict = {}
    if mask is not None:
        kwargs["attention_mask"] = mask
    if cache is not None:
        kwargs["past_key_values"] = cache
    if keep is not None and call.logits_to_keep:
        kwargs["logits_to_keep"] = keep
    output = model(ids, **kwargs)
    logits = output.logits if hasattr(output, "logits") else output
    if keep is not None and logits.dim() == 3:
        logits = logits[keep]
    return logits


def pad_rows(rows: Sequence[Sequence[int]], pad: int, left: bool, width: int | None = None):
    """(ids (B, T), mask (B, T) or None when nothing is padded, offsets of each row)."""
    width = width or max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    offsets = []
    for i, row in enumerate(rows):
        off = width - len(row) if left else 0
        ids[i, off : off + len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, off : off + len(row)] = 1
        offsets.append(off)
    return ids, (None if bool(mask.all()) else mask), offsets


@dataclass
class Row:
    """Input ids at absolute positions lo, lo + 1, ... of their sequence, and the requests scored
    on them: (request id, absolute position of the logit of the first target, targets)."""

    ids: tuple[int, ...]
    lo: int = 0
    spans: list[tuple[int, int, tuple[int, ...]]] = field(default_factory=list)


# (request, batch row, first column, end column, targets) of a request's tokens on one row
Piece = tuple[int, int, int, int, tuple[int, ...]]


def locate(placed: Sequence[tuple[Row, int, int]], shape: tuple[int, int]):
    """(keep (B, T) bool, pieces) for rows placed at (batch row, first column)."""
    keep = torch.zeros(shape, dtype=torch.bool)
    pieces: list[Piece] = []
    for row, j, off in placed:
        end = row.lo + len(row.ids)
        for request, first, targets in row.spans:
            a, b = max(first, row.lo), min(first + len(targets), end)
            if a < b:
                c0, c1 = off + a - row.lo, off + b - row.lo
                keep[j, c0:c1] = True
                pieces.append((request, j, c0, c1, targets[a - first : b - first]))
    return keep, pieces


@dataclass
class Sums:
    """Per-request sums over its scored tokens, in float64: log-prob, misses, smallest margin."""

    logprob: torch.Tensor
    misses: torch.Tensor
    margin: torch.Tensor

    @classmethod
    def zeros(cls, n: int) -> Sums:
        z = torch.zeros(n, dtype=torch.float64)
        return cls(z, z.clone(), torch.full((n,), float("inf"), dtype=torch.float64))


def requests_of(rows: Sequence[Row]) -> tuple[dict[int, int], dict[int, int]]:
    """(request -> local index, request -> number of targets) of the spans of `rows`."""
    local: dict[int, int] = {}
    lengths: dict[int, int] = {}
    for row in rows:
        for request, _, targets in row.spans:
            local.setdefault(request, len(local))
            lengths[request] = len(targets)
    return local, lengths


def accumulate(logits, keep, pieces: Sequence[Piece], local: dict[int, int], sums: Sums) -> None:
    """Add the tokens of `pieces` (scored on the flat logits of `keep`) to `sums`.

    Per-position statistics (max, log-sum-exp) are taken once per kept position and read per
    token, so a position shared by several requests (one-token choices, the shared start of the
    choices) costs once. `logits` is consumed: the log-sum-exp is computed in place (a fresh
    (N, V) temporary would cost more than the arithmetic on a CPU)."""
    if not pieces:
        return
    x = logits if logits.dtype == torch.float32 else logits.float()  # fp32 log-softmax
    before = [0]
    for n in keep.sum(dim=1).tolist()[:-1]:
        before.append(before[-1] + n)
    rank = (keep.cumsum(dim=1) - 1).tolist()  # (B, T): rank of a kept column in its row
    idx, tgt, own = [], [], []
    for request, j, c0, c1, targets in pieces:
        base = before[j] + rank[j][c0]
        idx.extend(range(base, base + c1 - c0))
        tgt.extend(targets)
        own.extend([local[request]] * (c1 - c0))
    idx_t = torch.tensor(idx, device=x.device)
    tgt_t = torch.tensor(tgt, device=x.device)
    target = x[idx_t, tgt_t]
    best = x.amax(dim=-1)  # (N,)
    is_max = target == best[idx_t]
    hit = torch.zeros_like(is_max)  # greedy: the target is the argmax (the first maximum)
    other = best[idx_t].clone()  # the best other logit: the maximum, or the runner-up
    if bool(is_max.any()):
        rows = idx_t[is_max].unique()
        picked = x.index_select(0, rows)
        slot = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        slot[rows] = torch.arange(len(rows), device=x.device)
        where = slot[idx_t[is_max]]
        hit[is_max] = picked.argmax(dim=-1)[where] == tgt_t[is_max]
        other[is_max] = picked.topk(2, dim=-1).values[where, 1]
    lse = x.sub_(best[:, None]).exp_().sum(dim=-1).log_().add_(best)  # x is consumed here
    own_t = torch.tensor(own)
    sums.logprob.index_add_(0, own_t, (target - lse[idx_t]).double().cpu())
    sums.misses.index_add_(0, own_t, (~hit).double().cpu())
    sums.margin.scatter_reduce_(0, own_t, (target - other).double().cpu(), reduce="amin")


def finish(local: dict[int, int], lengths: dict[int, int], sums: Sums, out: list) -> None:
    """Write a Score for every request of `local` into `out` (indexed by request id)."""
    lp, miss, gap = sums.logprob.tolist(), sums.misses.tolist(), sums.margin.tolist()
    for request, i in local.items():
        out[request] = Score(lp[i], miss[i] == 0, gap[i], lengths[request])
