"""`KVCache`: preallocated keys, values and sequence ids of every layer, for generation.

Buffers are allocated once for `capacity` positions, so a decode step writes one slice instead of
concatenating; `seq_ids` (B, capacity) keeps the sequence id of each cached position (-1 for left
padding) so that later queries keep ignoring padded keys.
"""

from __future__ import annotations

import torch

__all__ = ["KVCache"]


class KVCache:
    """Keys and values (B, capacity, Hkv, D) per layer; `length` positions are filled."""

    def __init__(
        self,
        *,
        n_layers: int,
        batch_size: int,
        capacity: int,
        n_kv_heads: int,
        head_dim: int,
        device,
        dtype: torch.dtype,
    ) -> None:
        shape = (batch_size, capacity, n_kv_heads, head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        # running max of ||k|| per (batch, kv head): the Triton decode kernel's ALiBi skip bound,
        # kept here so that a decode step does not read the whole cache once more to find it
        norm_shape = (batch_size, n_kv_heads)
        self.key_norm_max = [
            torch.zeros(norm_shape, device=device, dtype=torch.float32) for _ in range(n_layers)
        ]
        self.seq_ids = torch.zeros((batch_size, capacity), device=device, dtype=torch.long)
        # per row: the sequence id of the last real (unpadded) token, -1 before any, and the
        # learned position the next token takes if it continues that document
        self.last_id = torch.full((batch_size,), -1, device=device, dtype=torch.long)
        self.positions = torch.zeros((batch_size,), device=device, dtype=torch.long)
        self.capacity = capacity
        self.length = 0
        self.masked = False  # whether any cached position carries padding or a document id

    @property
    def batch_size(self) -> int:
        return self.seq_ids.shape[0]

    def index_select(self, rows: torch.Tensor) -> KVCache:
        """A new cache whose row i holds row `rows[i]` of this one (rows may repeat: several
        continuations of one cached prefix, like the choices of a question); this one is unchanged.
        The copy has the same capacity, so it can be filled further."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.seq_ids.device)
        picked = KVCache.__new__(KVCache)
        picked.keys = [k.index_select(0, rows) for k in self.keys]
        picked.values = [v.index_select(0, rows) for v in self.values]
        picked.key_norm_max = [n.index_select(0, rows) for n in self.key_norm_max]
        picked.seq_ids = self.seq_ids.index_select(0, rows)
        picked.last_id = self.last_id.index_select(0, rows)
        picked.positions = self.positions.index_select(0, rows)
        picked.capacity, picked.length, picked.masked = self.capacity, self.length, self.masked
        return picked

    def check_room(self, new: int) -> None:
        if self.length + new > self.capacity:
            raise ValueError(
                f"KV cache holds {self.capacity} positions; {self.length} are filled and"
                f" {new} more were given"
            )

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Writes this step's (B, T, Hkv, D) keys and values; returns all filled ones so far."""
        end = self.length + k.shape[1]
        self.keys[layer][:, self.length : end] = k
        self.values[layer][:, self.length : end] = v
        new_max = k.detach().float().norm(dim=-1).amax(dim=1)  # (B, Hkv)
        torch.maximum(self.key_norm_max[layer], new_max, out=self.key_norm_max[layer])
        return self.keys[layer][:, :end], self.values[layer][:, :end]

    def advance(self, seq_ids: torch.Tensor, *, masked: bool) -> None:
        """Called once per forward, after every layer wrote: `seq_ids` (B, T) of the new tokens.

        `masked` says the ids carry padding or documents (otherwise they are all 0 and later steps
        need no mask at all).
        """
        end = self.length + seq_ids.shape[1]
        self.seq_ids[:, self.length : end] = seq_ids
        _, self.positions, self.last_id = document_positions(seq_ids, self.last_id, self.positions)
        self.length = end
        self.masked = self.masked or masked


def document_positions(
    ids: torch.Tensor, last_id: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Learned-position indices of new tokens with sequence ids `ids` (B, T), -1 on padding.

    A token's position counts the real tokens before it in its document. A document starts at a
    real token whose id differs from the previous real token's (padding in between does not start
    one); the first new tokens continue the document of `last_id` (B,) (-1: none), whose next
    position is `positions` (B,). Returns (positions (B, T), the next `positions`, the next
    `last_id`).
    """
    B, T = ids.shape
    real = ids >= 0
    before = real.long().cumsum(1) - real.long()  # real new tokens before each one
    steps = torch.arange(T, device=ids.device).expand(B, T)
    last_real = torch.where(real, steps, -1).cummax(1).values  # index of the last real token <= j
    prev = torch.cat([last_real.new_full((B, 1), -1), last_real[:, :-1]], dim=1)
    prev_id = torch.where(prev >= 0, ids.gather(1, prev.clamp(min=0)), last_id[:, None])
    starts = real & (ids != prev_id)
    first = torch.where(starts, before, 0).cummax(1).values  # `before` at the latest start
    started = starts.long().cummax(1).values.bool()
    pos = torch.where(started, before - first, positions[:, None] + before)
    n_real = real.sum(1)
    next_positions = torch.where(started[:, -1], n_real - first[:, -1], positions + n_real)
    tail = ids.gather(1, last_real[:, -1:].clamp(min=0)).squeeze(1)
    next_last_id = torch.where(n_real > 0, tail, last_id)
    return pos, next_positions, next_last_id
