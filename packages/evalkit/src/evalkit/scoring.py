"""Log-likelihood scoring of (context, continuation) token requests, independent of batching.

    scores = score_requests(model, groups, ScoringOptions(batch_size=32))

`groups` holds the requests of each example (a multiple-choice question: one per choice). A
request's score comes from `evalkit.logprobs`: fp32 log-softmax over the whole vocabulary,
float64 sums, greedy flag and margin. Padding never reaches a scored position, so a request
scores the same alone or in any batch (to float rounding). Three paths, chosen by `sharing`:

- "packed" (models with `forward_packed`, e.g. `HFCausalLM`): each example is a tree, the
  longest common prefix of its requests' inputs (the context, and the first tokens the choices
  share) followed by each request's remainder; trees are packed into rows of `pack_len` tokens
  without padding, position ids restart per tree and a mask lets every remainder see its trunk
  and itself only. One forward computes each shared token once.
- "kv_cache" (models with `new_cache`, e.g. mpt's `MPTForCausalLM`): the trunks of a batch of
  examples run once, left-padded with a mask, into a KV cache; `cache.index_select` repeats each
  for its remainders, which run from the copies. Scored positions inside a trunk are read from
  the first forward.
- "none": each distinct input sequence is one row (one-token choices share it), rows sorted by
  length, padded on the right (any causal LM) or on the left with a mask (`padding_side`).

"auto" takes the first the model offers. Every path sorts by length, longest first, and bounds a
forward by `batch_size` rows and `max_batch_tokens` tokens. `lockstep=True` (several ranks, a
sharded model): ranks agree on the number of forwards and pad theirs with one-token dummies, so
no collective waits forever.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from evalkit.logprobs import (
    ModelCall,
    Request,
    Row,
    Score,
    Sums,
    accumulate,
    finish,
    forward_logits,
    inspect_model,
    locate,
    pad_rows,
    requests_of,
)

__all__ = ["SHARING", "Request", "Score", "ScoringOptions", "score_requests"]

SHARING = ("auto", "packed", "kv_cache", "none")

# Packing tries the most recent rows with room left, at most this many (first fit, bounded).
OPEN_ROWS = 64


@dataclass(frozen=True, kw_only=True)
class ScoringOptions:
    """batch_size: rows per forward. max_batch_tokens: rows x length per forward, at most.
    pack_len: tokens per packed row (a longer example gets a row of its own). padding_side:
    "right" or "left" (plain path). sharing: see the module docstring. pad_token_id: the id on
    padding (never scored). lockstep: see the module docstring. max_seq_len: the model's window,
    the longest input a forward may take (requests already fit it); None: a KV-cache batch
    never pads past its longest example."""

    batch_size: int = 32
    max_batch_tokens: int = 4096
    pack_len: int = 256
    padding_side: str = "right"
    sharing: str = "auto"
    pad_token_id: int = 0
    lockstep: bool = False
    max_seq_len: int | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("batch_size", "max_batch_tokens", "pack_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.max_seq_len is not None and (
            not isinstance(self.max_seq_len, int) or self.max_seq_len < 1
        ):
            problems.append(f"max_seq_len must be an int >= 1 or None, got {self.max_seq_len!r}")
        if self.padding_side not in ("right", "left"):
            problems.append(f"padding_side must be 'right' or 'left', got {self.padding_side!r}")
        if self.sharing not in SHARING:
            problems.append(f"sharing must be one of {SHARING}, got {self.sharing!r}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class _Tree:
    """An example's requests: the trunk all their inputs share, and their distinct remainders."""

    trunk: Row  # carries every span of the example
    branches: list[Row]

    def size(self) -> int:
        return len(self.trunk.ids) + sum(len(b.ids) for b in self.branches)

    def width(self) -> int:
        return max(len(self.branches), 1)

    def length(self) -> int:
        return len(self.trunk.ids) + max((len(b.ids) for b in self.branches), default=0)


def _common_prefix(seqs: Sequence[tuple[int, ...]]) -> int:
    first, n = seqs[0], min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return n


def _tree(group: Sequence[Request], first_id: int) -> _Tree:
    seqs = [(r.context + r.continuation)[:-1] for r in group]
    size = _common_prefix(seqs)
    spans = [(first_id + i, len(r.context) - 1, r.continuation) for i, r in enumerate(group)]
    branches: dict[tuple[int, ...], Row] = {}
    for span, seq in zip(spans, seqs, strict=True):
        if len(seq) > size:
            branches.setdefault(seq[size:], Row(seq[size:], size)).spans.append(span)
    return _Tree(Row(seqs[0][:size], 0, spans), list(branches.values()))


def _plain_rows(entries: Iterable[tuple[int, Request]]) -> list[Row]:
    """Each distinct input sequence is one row; the requests on it are its spans."""
    rows: dict[tuple[int, ...], Row] = {}
    for q, r in entries:
        seq = (r.context + r.continuation)[:-1]
        rows.setdefault(seq, Row(seq)).spans.append((q, len(r.context) - 1, r.continuation))
    return list(rows.values())


def _length(row: Row) -> int:
    return len(row.ids)


def _one(row: Row) -> int:
    return 1


def _batches(
    items: list,
    length: Callable,
    width: Callable,
    opts: ScoringOptions,
    padded: Callable[[list], int] | None = None,
) -> list[list]:
    """Longest first; at most batch_size rows and max_batch_tokens rows x padded length per batch.

    `padded(batch)`: the length the batch's forward pads to, when that can exceed its longest
    item's (the KV-cache path pads trunks on the left and branches on the right, separately); an
    item joins a batch only while that stays within the model's window (`opts.max_seq_len`;
    without one, within the batch's longest item), so no input outgrows the window. A stricter
    rule (always within the longest item) split the seed table's multiple-choice tasks into
    forwards of 1-2 examples: a long context with short choices and a shorter one with longer
    choices pad past either."""
    batches: list[list] = []
    rows = 0
    for item in sorted(items, key=length, reverse=True):
        n = width(item)
        if batches and rows + n <= opts.batch_size:
            longest = length(batches[-1][0])
            size = longest if padded is None else padded([*batches[-1], item])
            if size <= max(opts.max_seq_len or 0, longest) and (
                (rows + n) * size <= opts.max_batch_tokens
            ):
                batches[-1].append(item)
                rows += n
                continue
        batches.append([item])
        rows = n
    return batches


def _cached_length(trees: list[_Tree]) -> int:
    """The KV cache's length for a batch of trees: the longest trunk plus the longest branch."""
    trunk = max(len(t.trunk.ids) for t in trees)
    return trunk + max((len(b.ids) for t in trees for b in t.branches), default=0)


def _packs(trees: list[_Tree], opts: ScoringOptions) -> list[list[list[_Tree]]]:
    """Forwards of rows of trees: first-fit decreasing into rows of `pack_len` tokens (a longer
    tree has its own row), then rows of similar length grouped within max_batch_tokens."""
    rows: list[list[_Tree]] = []
    room: list[int] = []
    open_rows: list[int] = []  # rows with room left; the last OPEN_ROWS are tried (bounded cost)
    for tree in sorted(trees, key=_Tree.size, reverse=True):
        n = tree.size()
        slot = next((i for i in open_rows[-OPEN_ROWS:] if room[i] >= n), None)
        if slot is None:
            slot = len(rows)
            rows.append([])
            room.append(max(opts.pack_len, n))
            open_rows.append(slot)
        rows[slot].append(tree)
        room[slot] -= n
        if room[slot] == 0:
            open_rows.remove(slot)
    lengths = {id(r): sum(t.size() for t in r) for r in rows}
    return _batches(rows, lambda r: lengths[id(r)], lambda r: 1, opts)


def _placed(rows: Sequence[Row], offsets: Sequence[int]) -> list[tuple[Row, int, int]]:
    return [(row, j, off) for j, (row, off) in enumerate(zip(rows, offsets, strict=True))]


def _run_plain(model, call: ModelCall, rows: list[Row], opts: ScoringOptions, out) -> None:
    left = opts.padding_side == "left"
    ids, mask, offsets = pad_rows([r.ids for r in rows], opts.pad_token_id, left)
    keep, pieces = locate(_placed(rows, offsets), ids.shape)
    mask = mask.to(call.device) if (mask is not None and left) else None
    logits = forward_logits(model, call, ids.to(call.device), mask=mask, keep=keep.to(call.device))
    local, lengths = requests_of(rows)
    sums = Sums.zeros(len(local))
    accumulate(logits, keep, pieces, local, sums)
    finish(local, lengths, sums, out)


def _run_cached(model, call: ModelCall, trees: list[_Tree], opts: ScoringOptions, out) -> None:
    """One forward of the trunks (left-padded) into a KV cache, one of the branches after it."""
    dev, trunks = call.device, [t.trunk for t in trees]
    ids, mask, offsets = pad_rows([t.ids for t in trunks], opts.pad_token_id, left=True)
    branches = [b for t in trees for b in t.branches]
    owner = [i for i, t in enumerate(trees) for _ in t.branches]
    if not branches and opts.lockstep:  # every rank runs the second forward: a dummy branch
        branches, owner = [Row((opts.pad_token_id,), lo=len(trunks[0].ids))], [0]
    width = max((len(b.ids) for b in branches), default=0)
    cache = model.new_cache(len(trees), ids.shape[1] + width)
    local, lengths = requests_of(trunks)
    sums = Sums.zeros(len(local))
    keep, pieces = locate(_placed(trunks, offsets), ids.shape)
    mask = mask.to(dev) if mask is not None else None
    logits = forward_logits(model, call, ids.to(dev), mask=mask, keep=keep.to(dev), cache=cache)
    accumulate(logits, keep, pieces, local, sums)
    if branches:
        rest, _, offs = pad_rows([b.ids for b in branches], opts.pad_token_id, left=False)
        keep, pieces = locate(_placed(branches, offs), rest.shape)
        copies = cache.index_select(torch.tensor(owner, device=dev))
        logits = forward_logits(model, call, rest.to(dev), keep=keep.to(dev), cache=copies)
        accumulate(logits, keep, pieces, local, sums)
    finish(local, lengths, sums, out)


def _run_packed(model, call: ModelCall, rows: list[list[_Tree]], opts: ScoringOptions, out) -> None:
    """One forward of packed rows of trees (see the module docstring)."""
    width = max(sum(t.size() for t in row) for row in rows)
    shape = (len(rows), width)
    ids = [[opts.pad_token_id] * width for _ in rows]
    pos = [[0] * width for _ in rows]
    branch = [[0] * width for _ in rows]
    seg = [[-1 - c for c in range(width)] for _ in rows]  # padding: a segment of its own
    placed = []
    for j, row in enumerate(rows):
        col = 0
        for number, tree in enumerate(row):
            for k, part in enumerate([tree.trunk, *tree.branches]):
                end = col + len(part.ids)
                ids[j][col:end] = part.ids
                pos[j][col:end] = range(part.lo, part.lo + len(part.ids))
                seg[j][col:end] = [number] * len(part.ids)
                branch[j][col:end] = [k] * len(part.ids)  # 0: the trunk
                placed.append((part, j, col))
                col = end
    seg_t, branch_t = torch.tensor(seg), torch.tensor(branch)
    same_tree = seg_t[:, :, None] == seg_t[:, None, :]
    visible = (branch_t[:, None, :] == 0) | (branch_t[:, :, None] == branch_t[:, None, :])
    allowed = same_tree & visible & torch.ones(width, width, dtype=torch.bool).tril()
    keep, pieces = locate(placed, shape)
    dev = call.device
    logits = model.forward_packed(
        torch.tensor(ids, device=dev), torch.tensor(pos, device=dev), allowed.to(dev), keep.to(dev)
    )
    local, lengths = requests_of([tree.trunk for row in rows for tree in row])
    sums = Sums.zeros(len(local))
    accumulate(logits, keep, pieces, local, sums)
    finish(local, lengths, sums, out)


def _path(opts: ScoringOptions, call: ModelCall, model) -> str:
    wanted = opts.sharing
    if wanted == "auto":
        return "packed" if call.packed else "kv_cache" if call.prefix_cache else "none"
    offered = {"packed": call.packed, "kv_cache": call.prefix_cache, "none": True}
    if not offered[wanted]:
        contract = "forward_packed" if wanted == "packed" else "new_cache and past_key_values"
        raise ValueError(
            f"sharing={wanted!r} needs a model with {contract}; {type(model).__name__} has none"
        )
    return wanted


def _stages(path: str, groups: Sequence[Sequence[Request]], n: int, opts: ScoringOptions):
    """(runner, batches, dummy batch) per stage of `path`; every rank runs the same stages."""
    pad = opts.pad_token_id
    dummy_row = Row((pad,), 0, [(n, 0, (0,))])
    flat = [r for g in groups for r in g]
    if path == "none":
        return [
            (_run_plain, _batches(_plain_rows(enumerate(flat)), _length, _one, opts), [dummy_row])
        ]
    starts = [0]
    for g in groups[:-1]:
        starts.append(starts[-1] + len(g))
    trees = [_tree(g, s) for g, s in zip(groups, starts, strict=True) if g]
    if path == "packed":
        return [(_run_packed, _packs(trees, opts), [[_Tree(dummy_row, [])]])]
    # kv_cache: trees with a trunk and several requests; the others are plain rows
    sharing = [bool(t.trunk.ids) and len(t.trunk.spans) > 1 for t in trees]
    shared = [t for t, s in zip(trees, sharing, strict=True) if s]
    alone = [q for t, s in zip(trees, sharing, strict=True) if not s for q, _, _ in t.trunk.spans]
    rows = _plain_rows((q, flat[q]) for q in alone)
    dummy_tree = _Tree(Row((pad,), 0, [(n, 1, (0,))]), [Row((pad,), 1)])
    return [
        (_run_plain, _batches(rows, _length, _one, opts), [dummy_row]),
        (
            _run_cached,
            _batches(shared, _Tree.length, _Tree.width, opts, _cached_length),
            [dummy_tree],
        ),
    ]


def _agree(count: int) -> int:
    from composer_lite.dist import all_reduce

    return int(all_reduce([count], op="max")[0])


def score_requests(
    model: torch.nn.Module,
    groups: Sequence[Sequence[Request]],
    options: ScoringOptions | None = None,
    *,
    call: ModelCall | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[Score]]:
    """A Score per request, grouped like `groups` (see the module docstring)."""
    opts = options or ScoringOptions()
    call = call or inspect_model(model)
    if opts.padding_side == "left" and not call.attention_mask:
        raise ValueError(
            f"padding_side='left' needs a model whose forward takes attention_mask; "
            f"{type(model).__name__}.forward does not (use padding_side='right')"
        )
    path = _path(opts, call, model)
    n = sum(len(g) for g in groups)
    out: list[Score | None] = [None] * (n + 1)  # out[n]: where dummy batches write
    with torch.no_grad():
        for run, batches, dummy in _stages(path, groups, n, opts):
            count = _agree(len(batches)) if opts.lockstep else len(batches)
            for i in range(count):
                real = i < len(batches)
                run(model, call, batches[i] if real else dummy, opts, out)
                if on_batch:
                    on_batch(_requests_in(batches[i]) if real else 0)
    result, k = [], 0
    for group in groups:
        result.append(out[k : k + len(group)])
        k += len(group)
    return result


def _requests_in(batch: list) -> int:
    rows = [r for item in batch for r in (item if isinstance(item, list) else [item])]
    return sum(len(r.trunk.spans) if isinstance(r, _Tree) else len(r.spans) for r in rows)
