"""Tokens of finetuning batches: padding is marked (`attention_mask`), the Trainer counts only the
real tokens (`time/token`), and `foundry report x=tokens` plots that count. Pretraining batches
keep every token."""

from __future__ import annotations

import numpy as np
import torch

from composer_lite import Trainer
from composer_lite.loggers import JSONLLogger
from composer_lite.microbatch import count_input_tokens
from foundry.data.loader import LoaderSettings, build_loader, lm_collate
from foundry.data.packing import packed_row
from foundry.data.sft import Tokenized
from foundry.model import MPTTrainable
from foundry.report import ReportCommand, draw, load_runs
from foundry.schema import DataConfig, SourceConfig
from mpt import MPTConfig, MPTForCausalLM
from streaming import MDSWriter


def _row(ids: list[int], prompt: int) -> dict[str, np.ndarray]:
    labels = [-100] * prompt + ids[prompt:]
    return {"input_ids": np.array(ids, np.int32), "labels": np.array(labels, np.int32)}


def test_padding_is_marked_and_left_out_of_the_token_count():
    rows = [_row([5, 6, 7, 8], 2), _row([9, 10], 1)]
    batch = lm_collate(rows)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert count_input_tokens(batch) == 6  # was 8: the collator's two pads counted
    # a packed row's own padding (a segment after its last example) is padding too
    a, b = (Tokenized(where=f"row {i}", **r) for i, r in enumerate(rows))
    packed = lm_collate([packed_row([a, b], 8, pad_id=0), packed_row([a, a], 8, pad_id=0)])
    assert packed["attention_mask"].tolist() == [[1] * 6 + [0] * 2, [1] * 8]
    assert count_input_tokens(packed) == 14
    pretraining = lm_collate([{"tokens": np.arange(4, dtype=np.int32)}] * 3)
    assert "attention_mask" not in pretraining and count_input_tokens(pretraining) == 12


def test_the_mask_changes_no_loss_or_gradient():
    torch.manual_seed(0)
    config = MPTConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=8, vocab_size=64)
    model = MPTTrainable(MPTForCausalLM(config.replace(attn_impl="sdpa")))
    batch = lm_collate([_row([5, 6, 7, 8, 9, 10], 2), _row([9, 10, 11], 1)])
    grads = []
    for given in (batch, {k: v for k, v in batch.items() if k != "attention_mask"}):
        model.zero_grad()
        loss = model(given).loss
        loss.backward()
        grads.append([loss.detach(), *(p.grad.clone() for p in model.parameters())])
    assert all(torch.equal(x, y) for x, y in zip(*grads, strict=True))


def test_report_plots_the_real_tokens_of_a_finetuning_run(tmp_path):
    lengths = [3, 8, 5, 2, 8, 4, 6, 1]
    with MDSWriter(
        out=str(tmp_path / "sft"), columns={"input_ids": "ndarray:int32", "labels": "ndarray:int32"}
    ) as writer:
        for n in lengths:
            writer.write(_row(list(range(1, n + 2)), 1))  # n + 1 tokens, n of them labelled
    source = SourceConfig(local=str(tmp_path / "sft"))
    data = DataConfig(sources={"sft": source}, max_seq_len=9, shuffle=False)
    loader = build_loader(data, LoaderSettings(batch_size=4, shuffle=False, seed=0))
    torch.manual_seed(0)
    config = MPTConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=9, vocab_size=64)
    model = MPTTrainable(MPTForCausalLM(config.replace(attn_impl="sdpa")))
    Trainer(
        model,
        loader,
        torch.optim.SGD(model.parameters(), lr=0.1),
        max_duration="2ba",
        loggers=[JSONLLogger(tmp_path / "run" / "metrics.jsonl")],
        default_callbacks=False,
    ).fit()
    real = [sum(n + 1 for n in lengths[:4]), sum(n + 1 for n in lengths)]  # 22, 45
    padded = [4 * 9, 4 * 9 + 4 * 9]  # what input_ids alone would count: each batch pads to 9
    assert real != padded
    runs = load_runs(ReportCommand(runs=[str(tmp_path / "run")], x="tokens"))
    assert runs[0].tokens == {1: real[0], 2: real[1]}
    (loss, _, _) = draw(runs, x="tokens").axes
    assert list(loss.get_lines()[0].get_xdata()) == real
