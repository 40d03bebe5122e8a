"""The trainable-model and LM-batch contracts accept conforming objects and name what is wrong."""

import pytest
import torch
from torch import nn

from composer_lite import (
    SupportsBlocks,
    SupportsFlops,
    TrainableModel,
    check_lm_batch,
    check_trainable_model,
)


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 11, dim: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList([nn.Linear(dim, dim) for _ in range(2)])
        self.head = nn.Linear(dim, vocab)

    def forward(self, batch):
        h = self.emb(batch["input_ids"])
        for layer in self.layers:
            h = h + layer(h)
        return self.head(h)

    def loss(self, outputs, batch):
        return nn.functional.cross_entropy(outputs.flatten(0, 1), batch["labels"].flatten())

    def flops_per_token(self, seq_len: int) -> float:
        return 6.0 * sum(p.numel() for p in self.parameters())

    def blocks(self):
        return list(self.layers)


class NoLoss(nn.Module):
    def forward(self, batch):
        return batch


def make_batch(b: int = 2, t: int = 5) -> dict:
    ids = torch.randint(0, 11, (b, t))
    labels = ids.clone()
    labels[:, :2] = -100
    return {"input_ids": ids, "labels": labels}


def test_conforming_model_passes_and_its_loss_is_a_scalar():
    model = TinyLM()
    assert isinstance(model, TrainableModel)
    assert isinstance(model, SupportsFlops) and isinstance(model, SupportsBlocks)
    check_trainable_model(model)
    batch = make_batch()
    check_lm_batch(batch)
    assert model.loss(model(batch), batch).dim() == 0


def test_model_without_loss_is_rejected_by_name():
    model = NoLoss()
    assert not isinstance(model, TrainableModel)
    assert not isinstance(model, SupportsFlops)
    with pytest.raises(
        TypeError, match=r"NoLoss does not follow the trainable-model contract: it lacks loss\(\)"
    ):
        check_trainable_model(model)


def test_object_with_no_methods_lists_every_missing_one():
    with pytest.raises(TypeError, match=r"lacks forward\(\), loss\(\)"):
        check_trainable_model(object())


def test_non_callable_attribute_does_not_count_as_a_method():
    class Odd:
        forward = 3

        def loss(self, outputs, batch):
            return outputs

    with pytest.raises(TypeError, match=r"lacks forward\(\)"):
        check_trainable_model(Odd())


def test_batch_problems_are_all_named_at_once():
    batch = {
        "input_ids": torch.zeros(2, 5, dtype=torch.int32),
        "sequence_id": torch.zeros(2, 4, dtype=torch.int64),
    }
    with pytest.raises(ValueError) as err:
        check_lm_batch(batch)
    text = str(err.value)
    assert "missing key 'labels'" in text
    assert "'input_ids' should be int64, got torch.int32" in text
    assert "'sequence_id' has shape (2, 4), input_ids has (2, 5)" in text


def test_batch_must_be_a_mapping_of_2d_tensors():
    with pytest.raises(TypeError, match="dict of tensors; got list"):
        check_lm_batch([1, 2])
    with pytest.raises(ValueError, match=r"'labels' should have shape \(B, T\), got \(10,\)"):
        check_lm_batch(
            {
                "input_ids": torch.zeros(2, 5, dtype=torch.int64),
                "labels": torch.zeros(10, dtype=torch.int64),
            }
        )
    with pytest.raises(ValueError, match="'labels' should be a torch.Tensor, got list"):
        check_lm_batch({"input_ids": torch.zeros(2, 5, dtype=torch.int64), "labels": [1, 2]})
