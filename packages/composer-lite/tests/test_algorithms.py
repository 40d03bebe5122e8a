"""The built-in algorithms: label smoothing, low-precision LayerNorm, sequence-length warmup;
each against a hand-built State, then once through the Trainer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from composer_lite import Callback, Event, State, Time, Trainer
from composer_lite.algorithms import (
    LabelSmoothing,
    LowPrecisionLayerNorm,
    LPLayerNorm,
    SeqLengthWarmup,
    apply_low_precision_layernorm,
    smoothed_cross_entropy,
    truncate_batch,
    warmup_length,
)
from composer_lite.loggers import LoggerHub
from composer_lite.testing import TinyLM, random_lm_batch

HUB = LoggerHub([])


def make_state(model=None, max_duration="10ba") -> State:
    torch.manual_seed(0)
    model = model or TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return State(model=model, optimizer=opt, max_duration=Time.parse(max_duration))


def run(algorithm, event, state):
    if algorithm.match(event, state):
        algorithm.apply(event, state, HUB)
        return True
    return False


# -- label smoothing ------------------------------------------------------------------------
def reference_smoothed(logits, labels, s):
    """(1 - s) * NLL(label) + s * mean_c NLL(c), averaged over labels != -100, in float64."""
    logp = torch.log_softmax(logits.double(), dim=-1)  # (B, T, V)
    keep = labels != -100
    nll = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    uniform = -logp.mean(-1)  # (B, T)
    return (((1 - s) * nll + s * uniform)[keep]).mean()


@pytest.mark.parametrize("shift", [False, True])
def test_smoothed_cross_entropy_matches_the_definition(shift):
    torch.manual_seed(0)
    logits, batch = torch.randn(3, 7, 11), random_lm_batch(3, 7, vocab=11)
    labels = batch["labels"]
    got = smoothed_cross_entropy(logits, labels, 0.2, shift_labels=shift)
    want = (
        reference_smoothed(logits[:, :-1], labels[:, 1:], 0.2)
        if shift
        else reference_smoothed(logits, labels, 0.2)
    )
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)  # float32 compute
    with pytest.raises(ValueError, match=r"logits \(B, T, V\)"):
        smoothed_cross_entropy(logits[0], labels, 0.1)


def test_label_smoothing_replaces_the_loss_at_after_loss_only():
    state, algorithm = make_state(), LabelSmoothing(smoothing=0.0)
    state.microbatch = random_lm_batch(2, 5)
    state.outputs = SimpleNamespace(logits=state.model(state.microbatch))  # an object with .logits
    state.loss = torch.tensor(123.0)
    assert not run(algorithm, Event.AFTER_FORWARD, state)
    assert run(algorithm, Event.AFTER_LOSS, state)
    # With no smoothing it is the model's own loss; with smoothing it is larger here.
    torch.testing.assert_close(state.loss, state.model.loss(state.outputs.logits, state.microbatch))
    plain = float(state.loss.detach())
    run(LabelSmoothing(smoothing=0.3), Event.AFTER_LOSS, state)
    assert float(state.loss.detach()) > plain and state.loss.requires_grad
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        LabelSmoothing(smoothing=1.0)
    state.outputs = [1, 2]
    with pytest.raises(TypeError, match="logits"):
        run(algorithm, Event.AFTER_LOSS, state)


# -- low-precision LayerNorm ----------------------------------------------------------------
def test_low_precision_layernorm_surgery_keeps_parameters_and_runs_in_bf16():
    state = make_state()
    params = {n: p for n, p in state.model.named_parameters()}
    x = torch.randn(2, 5, state.model.dim)
    norm = state.model.norm
    expected = norm(x)
    algorithm = LowPrecisionLayerNorm()
    assert run(algorithm, Event.INIT, state) and algorithm.replaced == 3
    assert type(norm) is LPLayerNorm and isinstance(norm, nn.LayerNorm)
    assert {n: p for n, p in state.model.named_parameters()} == params  # the same objects
    torch.testing.assert_close(norm(x), expected)  # outside autocast: an ordinary LayerNorm
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = norm(x)
        with torch.autocast("cpu", enabled=False):
            fp32 = nn.functional.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias)
    assert low.dtype is torch.bfloat16
    torch.testing.assert_close(low.float(), fp32, rtol=2e-2, atol=2e-2)  # bf16: 8 bits of mantissa
    batch = random_lm_batch(2, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = state.model.loss(state.model(batch), batch)
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype is torch.float32 for p in params.values())


def test_low_precision_layernorm_leaves_subclasses_and_requires_a_layernorm():
    class MyNorm(nn.LayerNorm):
        pass

    model = nn.Sequential(MyNorm(4), nn.LayerNorm(4), nn.Linear(4, 4))
    assert apply_low_precision_layernorm(model) == 1
    assert type(model[0]) is MyNorm and type(model[1]) is LPLayerNorm
    state = make_state(model=nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="no nn.LayerNorm"):
        run(LowPrecisionLayerNorm(), Event.INIT, state)
    run(LowPrecisionLayerNorm(require=False), Event.INIT, state)


# -- sequence-length warmup -----------------------------------------------------------------
def test_warmup_length_schedule():
    lengths = [warmup_length(p, 16, 128, 8) for p in (0.0, 0.1, 0.5, 0.99, 1.0, 2.0)]
    assert lengths == [16, 24, 72, 120, 128, 128]
    assert warmup_length(0.5, 16, 12, 8) == 12  # shorter than the minimum: left alone


def test_truncate_batch_cuts_every_sequence_tensor_alike():
    batch = {
        **random_lm_batch(2, 16),
        "sequence_id": torch.zeros(2, 16, dtype=torch.long),
        "attention_mask": torch.ones(2, 16),
        "id": torch.arange(2),
        "name": "x",
    }
    cut = truncate_batch(batch, 8)
    for key in ("input_ids", "labels", "sequence_id", "attention_mask"):
        assert cut[key].shape == (2, 8) and cut[key].is_contiguous()
        torch.testing.assert_close(cut[key], batch[key][:, :8])
    assert cut["id"] is batch["id"] and cut["name"] == "x"
    with pytest.raises(ValueError, match="input_ids"):
        truncate_batch({"labels": batch["labels"]}, 8)


def test_seq_length_warmup_at_batch_start_over_its_duration():
    state, algorithm = (
        make_state(max_duration="100ba"),
        SeqLengthWarmup(duration="0.5dur", min_seq_len=16),
    )
    seen = []
    for batch_index in (0, 25, 49, 50, 90):
        state.timestamp.batch = batch_index
        state.batch = random_lm_batch(2, 64)
        assert run(algorithm, Event.BATCH_START, state)
        seen.append(state.batch["input_ids"].shape[1])
        assert state.batch["labels"].shape == state.batch["input_ids"].shape
    assert seen == [16, 40, 56, 64, 64]
    tokens = SeqLengthWarmup(duration="1000tok", min_seq_len=8)
    state.timestamp.token, state.batch = 500, random_lm_batch(2, 32)
    run(tokens, Event.BATCH_START, state)
    assert state.batch["input_ids"].shape[1] == 16
    for bad in ({"step_size": 12}, {"min_seq_len": 4}, {"duration": "1ep"}):
        with pytest.raises(ValueError):
            SeqLengthWarmup(**bad)


# -- through the Trainer --------------------------------------------------------------------
class _Loader(list):
    batch_size = 4


class _Seen(Callback):
    def __init__(self):
        self.lengths, self.losses = [], []

    def after_loss(self, state, logger):
        self.lengths.append(state.microbatch["input_ids"].shape[1])
        self.losses.append(float(state.loss.detach()))


def test_algorithms_through_the_trainer():
    torch.manual_seed(0)
    model, seen = TinyLM(), _Seen()
    data = _Loader(random_lm_batch(4, 32, seed=i) for i in range(4))
    algorithms = [
        LowPrecisionLayerNorm(),
        SeqLengthWarmup(duration="4ba", min_seq_len=8),
        LabelSmoothing(smoothing=0.1),
    ]
    trainer = Trainer(
        model,
        data,
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        max_duration="1ep",
        algorithms=algorithms,
        callbacks=[seen],
        loggers=[],
        default_callbacks=False,
        precision="amp_bf16",
        device="cpu",
    )
    trainer.fit()
    assert type(model.norm) is LPLayerNorm
    assert seen.lengths == [8, 8, 16, 24]  # 8 + 24 * progress, rounded down to multiples of 8
    assert all(torch.isfinite(torch.tensor(seen.losses)))
    assert trainer.state.step.seq_len == 24
