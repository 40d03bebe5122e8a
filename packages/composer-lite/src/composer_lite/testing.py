"""Small models and data for tests and benchmarks (of this package and the ones above it).

`TinyLM` follows the trainable-model contract with a token-mean loss over labels != -100;
`write_lm_dataset` writes an MDS dataset of random token rows that `lm_loader` streams back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["TinyLM", "lm_loader", "random_lm_batch", "write_lm_dataset"]


class _Block(nn.Module):
    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        return x + self.drop(self.down(torch.nn.functional.gelu(self.up(self.norm(x)))))


class TinyLM(nn.Module):
    """Embedding, `n_layers` residual MLP blocks, LayerNorm, head: logits (B, T, V).

    The loss is cross-entropy averaged over the labels that are not -100 (labels are targets for
    the same position: no shift), as the trainable-model contract asks.
    """

    def __init__(
        self, vocab: int = 64, dim: int = 32, n_layers: int = 2, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.vocab, self.dim = vocab, dim
        self.emb = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList([_Block(dim, dropout) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.emb(batch["input_ids"])  # (B, T, D)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))  # (B, T, V)

    def loss(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(
            outputs.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100
        )

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def flops_per_token(self, seq_len: int) -> float:
        return 6.0 * sum(p.numel() for p in self.parameters())


def random_lm_batch(
    batch: int, seq: int, vocab: int = 64, *, seed: int = 0, mask_fraction: float = 0.3
) -> dict[str, torch.Tensor]:
    """input_ids and labels (B, T); a random `mask_fraction` of labels is -100 (uneven per row)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    labels = torch.roll(ids, -1, dims=1)
    labels[torch.rand(batch, seq, generator=gen) < mask_fraction] = -100
    return {"input_ids": ids, "labels": labels}


def write_lm_dataset(out: str, samples: int, seq: int, vocab: int = 64, *, seed: int = 0) -> str:
    """An MDS dataset of `samples` rows: columns `input_ids` and `labels` (int32, (seq,)), `id`."""
    from streaming import MDSWriter

    rng = np.random.default_rng(seed)
    with MDSWriter(
        out=out,
        columns={
            "id": "int",
            "input_ids": f"ndarray:int32:{seq}",
            "labels": f"ndarray:int32:{seq}",
        },
        size_limit=1 << 14,
    ) as writer:
        for i in range(samples):
            ids = rng.integers(0, vocab, seq, dtype=np.int32)
            labels = np.roll(ids, -1).astype(np.int32)
            labels[rng.random(seq) < 0.2] = -100
            writer.write({"id": i, "input_ids": ids, "labels": labels})
    return out


def _collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.from_numpy(np.stack([r["input_ids"] for r in rows])).long(),
        "labels": torch.from_numpy(np.stack([r["labels"] for r in rows])).long(),
        "id": torch.tensor([r["id"] for r in rows]),
    }


def lm_loader(
    local: str,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 1,
    num_workers: int = 0,
    **dataset_options: Any,
):
    """A StreamingDataLoader (per-device `batch_size`) over a dataset from `write_lm_dataset`."""
    from streaming import StreamingDataLoader, StreamingDataset

    dataset = StreamingDataset(
        local=local, batch_size=batch_size, shuffle=shuffle, shuffle_seed=seed, **dataset_options
    )
    return StreamingDataLoader(dataset, num_workers=num_workers, collate_fn=_collate)
