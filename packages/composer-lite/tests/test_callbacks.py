"""The built-in callbacks, each driven through its events on a hand-built State; one end-to-end
run through the Trainer; gradient clipping and EMA on FSDP2 (gloo, 2 ranks)."""

from __future__ import annotations

import io
import math
import multiprocessing as mp
import os
import sys
import time

import pytest
import torch

from composer_lite import Event, State, StepResult, Time, Trainer, TrainerConfig
from composer_lite.callbacks import (
    EMA,
    EarlyStopping,
    GradClip,
    Guard,
    HangWatchdog,
    LRMonitor,
    MemoryMonitor,
    ProgressBar,
    SpeedMonitor,
    TrainingDivergedError,
    clip_grad_norm,
    default_callbacks,
    memory_metrics,
    peak_flops_for,
)
from composer_lite.callbacks import speed_monitor as speed_module
from composer_lite.config import GuardConfig
from composer_lite.loggers import JSONLLogger, LoggerHub, read_jsonl
from composer_lite.testing import TinyLM, random_lm_batch
from composer_lite.training import total_grad_norm

HUB = LoggerHub([])


def make_state(model=None, max_duration="10ba", **fields) -> State:
    torch.manual_seed(0)
    model = model or TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return State(model=model, optimizer=opt, max_duration=Time.parse(max_duration), **fields)


def fire(callbacks, event, state):
    for cb in callbacks:
        cb.run_event(event, state, HUB)


def step_result(**fields) -> StepResult:
    """A StepResult of a batch of 4 rows of 8 tokens; `fields` replace the defaults."""
    defaults = dict(loss=1.0, grad_norm=1.0, tokens=32, loss_tokens=32, samples=4, seq_len=8)
    return StepResult(**{**defaults, **fields})


def train_step(state, callbacks, *, seed=0, loss_scale=1.0):
    """One step as the Trainer runs it (one microbatch, one rank)."""
    state.batch = random_lm_batch(4, 8, seed=seed)
    fire(callbacks, Event.BATCH_START, state)
    state.microbatch = state.batch
    state.outputs = state.model(state.batch)
    state.loss = state.model.loss(state.outputs, state.batch) * loss_scale
    state.loss.backward()
    tokens = int((state.batch["labels"] != -100).sum())
    loss, grad_norm = float(state.loss.detach()), total_grad_norm(state.model)
    state.step = step_result(loss=loss, grad_norm=grad_norm, tokens=tokens, loss_tokens=tokens)
    fire(callbacks, Event.BEFORE_OPTIMIZER_STEP, state)
    if not state.skip_step and state.rollback_reason is None:
        state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.skip_step, state.rollback_reason = False, None
    state.timestamp.advance_batch(4, tokens)
    state.metrics["loss/train/total"] = state.step.loss
    fire(callbacks, Event.BATCH_END, state)
    metrics = dict(state.metrics)
    state.metrics.clear()
    return metrics


def flat_params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


# -- GPU peaks, clipping, monitors ------------------------------------------------------------
@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.5e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989.5e12),
        ("NVIDIA A100-SXM4-40GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
    ],
)
def test_gpu_peak_table(name, peak):
    assert peak_flops_for(name) == peak


@pytest.mark.parametrize("name", ["NVIDIA GeForce RTX 4090", "NVIDIA H100 NVL", "Tesla V100"])
def test_unknown_gpu_is_an_error_naming_it(name):
    with pytest.raises(ValueError, match=name):
        peak_flops_for(name)


def test_clip_grad_norm_returns_the_norm_before_and_clips_to_max():
    state = make_state()
    batch = random_lm_batch(4, 8)
    state.model.loss(state.model(batch), batch).backward()
    before = total_grad_norm(state.model)
    cb = GradClip(max_norm=before / 4)
    cb.run_event(Event.BEFORE_OPTIMIZER_STEP, state, HUB)
    assert state.metrics["grad/norm"] == pytest.approx(before)
    assert total_grad_norm(state.model) == pytest.approx(before / 4, rel=1e-4)
    assert clip_grad_norm(state.model, 1e6) == pytest.approx(before / 4, rel=1e-4)  # no-op
    with pytest.raises(ValueError, match="positive"):
        GradClip(max_norm=0)


def test_lr_monitor_logs_the_rate_each_step_used():
    state = make_state()
    state.scheduler = torch.optim.lr_scheduler.LambdaLR(state.optimizer, lambda s: 1.0 / (s + 1))
    rates = []
    for i in range(3):
        rates.append(train_step(state, [LRMonitor()], seed=i)["lr-AdamW/group0"])
        state.scheduler.step()
    assert rates == pytest.approx([1e-2, 1e-2 / 2, 1e-2 / 3])


def test_memory_monitor_metrics_and_nothing_on_cpu():
    stats = {
        "allocated_bytes.all.current": 2 << 30,
        "reserved_bytes.all.peak": 3 << 30,
        "num_alloc_retries": 4,
    }
    got = memory_metrics(stats)
    assert got["memory/allocated"] == 2 and got["memory/peak_reserved"] == 3
    assert got["memory/alloc_retries"] == 4 and got["memory/reserved"] == 0
    assert "memory/allocated" not in train_step(make_state(), [MemoryMonitor()])


def test_speed_monitor_rates_window_and_no_mfu_on_cpu(monkeypatch):
    clock = iter([0.0, 0.5, 1.0, 2.0, 3.0, 3.5])  # batches of 0.5 s, 1.0 s, 0.5 s
    monkeypatch.setattr(speed_module.time, "perf_counter", lambda: next(clock))
    state, cb = make_state(world_size=2), SpeedMonitor(window=2, skip_first=0)
    cb.run_event(Event.FIT_START, state, HUB)
    seen = [train_step(state, [cb], seed=i) for i in range(3)]
    # tokens the model processed, 4 samples x 8 per step, masked labels included (loss tokens
    # would undercount the work and MFU)
    loss_tokens = int((random_lm_batch(4, 8, seed=0)["labels"] != -100).sum())
    assert loss_tokens < 32
    assert seen[0]["throughput/tokens_per_sec"] == pytest.approx(32 / 0.5)
    assert seen[2]["throughput/tokens_per_sec"] == pytest.approx(64 / 1.5)
    assert seen[2]["throughput/samples_per_sec"] == pytest.approx(8 / 1.5)
    assert seen[2]["throughput/device/tokens_per_sec"] == pytest.approx(64 / 3)
    flops = state.model.flops_per_token(8) * 64 / 1.5 / 2
    assert seen[2]["throughput/device/flops_per_sec"] == pytest.approx(flops)
    assert "throughput/device/mfu" not in seen[2]


def test_speed_monitor_keeps_each_fits_first_batch_out_of_the_window(monkeypatch):
    """The first batch compiles (60 s here); the rates are those of the batches after it."""
    clock = iter([0.0, 60.0, 60.5, 61.5, 91.5, 92.5])
    monkeypatch.setattr(speed_module.time, "perf_counter", lambda: next(clock))
    state, cb = make_state(), SpeedMonitor(window=20)
    cb.run_event(Event.FIT_START, state, HUB)
    seen = [train_step(state, [cb], seed=i) for i in range(3)]
    assert seen[0]["time/batch_seconds"] == 60 and "throughput/tokens_per_sec" not in seen[0]
    assert seen[1]["throughput/tokens_per_sec"] == pytest.approx(32 / 0.5)
    assert seen[2]["throughput/tokens_per_sec"] == pytest.approx(64 / 1.5)
    cb.run_event(Event.FIT_START, state, HUB)  # a second fit (a resume) compiles again
    again = [train_step(state, [cb], seed=i) for i in range(2)]
    assert again[0]["time/batch_seconds"] == 30 and "throughput/tokens_per_sec" not in again[0]
    assert again[1]["throughput/tokens_per_sec"] == pytest.approx(32 / 1.0)
    with pytest.raises(ValueError, match="skip_first must be an int >= 0"):
        SpeedMonitor(skip_first=-1)


def test_speed_monitor_mfu_against_the_table_and_unknown_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    state = make_state(device=torch.device("cuda"))
    cb = SpeedMonitor(synchronize=False, skip_first=0)
    cb.fit_start(state, HUB)
    state.step = step_result(tokens=1000, samples=2, seq_len=8)
    cb.batch_start(state, HUB)
    cb.batch_end(state, HUB)
    mfu = state.metrics["throughput/device/mfu"]
    assert mfu == pytest.approx(state.metrics["throughput/device/flops_per_sec"] / 756e12)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Mystery GPU 9000")
    with pytest.raises(ValueError, match="Mystery GPU 9000"):
        SpeedMonitor().fit_start(state, HUB)
    SpeedMonitor(peak_flops=1e15).fit_start(state, HUB)  # an explicit peak is not a guess


# -- EMA ------------------------------------------------------------------------------------
def test_ema_follows_the_formula_swaps_for_eval_and_round_trips():
    state, ema = make_state(), EMA(decay=0.75)
    fire([ema], Event.INIT, state)
    fire([ema], Event.FIT_START, state)
    expected = flat_params(state.model)
    for i in range(3):
        train_step(state, [ema], seed=i)
        expected = 0.75 * expected + 0.25 * flat_params(state.model)
    live = flat_params(state.model)
    shadow = torch.cat([w.flatten() for w in ema.state_dict()["weights"].values()])
    torch.testing.assert_close(shadow, expected)
    fire([ema], Event.EVAL_START, state)
    torch.testing.assert_close(flat_params(state.model), expected)
    torch.testing.assert_close(
        torch.cat([w.flatten() for w in ema.state_dict()["weights"].values()]), expected
    )
    fire([ema], Event.EVAL_END, state)
    torch.testing.assert_close(flat_params(state.model), live)
    # A resumed run: the state is loaded before FIT_START, into a fresh callback.
    again = EMA(decay=0.75)
    again.load_state_dict(ema.state_dict())
    fire([again], Event.FIT_START, state)
    with again.averaged_weights(state.model):
        torch.testing.assert_close(flat_params(state.model), expected)
    assert again.num_updates == 3
    bad = EMA()
    bad.load_state_dict({"weights": {"nope": torch.zeros(1)}})
    with pytest.raises(ValueError, match=r"missing \['emb.weight'.*unexpected \['nope'\]"):
        bad.fit_start(state, HUB)


def test_ema_tracks_the_weights_until_start():
    state, ema = make_state(), EMA(decay=0.5, start="2ba")
    ema.fit_start(state, HUB)
    train_step(state, [ema])
    torch.testing.assert_close(
        torch.cat([w.flatten() for w in ema.state_dict()["weights"].values()]),
        flat_params(state.model),
    )
    assert ema.num_updates == 0


# -- early stopping, progress ---------------------------------------------------------------
def test_early_stopping_on_eval_loss_and_state():
    state, cb = make_state(), EarlyStopping(metric="eval/loss", patience=2, min_delta=0.01)
    for loss in [3.0, 2.0, 1.995, 2.5]:
        state.eval_metrics = {"eval/loss": loss}
        cb.eval_end(state, HUB)
    assert state.stop_reason and "eval/loss" in state.stop_reason and cb.best == 2.0
    again = EarlyStopping(metric="eval/loss", patience=2)
    again.load_state_dict(cb.state_dict())
    assert (again.best, again.bad_checks) == (2.0, 2)
    state.eval_metrics = {"eval/accuracy": 1.0}
    with pytest.raises(KeyError, match="eval/accuracy"):
        EarlyStopping().eval_end(state, HUB)


def test_early_stopping_on_a_train_metric_max_mode():
    state, cb = make_state(), EarlyStopping(metric="acc", mode="max", patience=1)
    for value in [0.5, 0.6]:
        state.metrics = {"acc": value}
        cb.batch_end(state, HUB)
    assert state.stop_reason is None
    cb.batch_end(state, HUB)  # 0.6 again: no improvement
    assert state.stop_reason is not None
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="lowest")


def test_progress_bar_plain_lines_tty_redraws_and_rank_zero_only():
    out = io.StringIO()
    state, bar = make_state(max_duration="5ba"), ProgressBar(stream=out, interval=2)
    fire([bar], Event.FIT_START, state)
    for i in range(5):
        train_step(state, [bar], seed=i)
    lines = out.getvalue().splitlines()
    assert [line.split("]")[0] for line in lines] == ["[2/5", "[4/5", "[5/5"]
    assert "loss " in lines[0] and "tok/s" in lines[0] and "ETA 0:00:00" in lines[-1]
    tty_out = io.StringIO()
    tty = ProgressBar(stream=tty_out, tty=True, refresh=0.0)
    state = make_state(max_duration="2ba")
    fire([tty], Event.FIT_START, state)
    for i in range(2):
        train_step(state, [tty], seed=i)
    fire([tty], Event.FIT_END, state)
    assert tty_out.getvalue().count("\r") == 2 and tty_out.getvalue().endswith("\n")
    quiet, state = io.StringIO(), make_state(max_duration="2ba", rank=1)
    bar = ProgressBar(stream=quiet, interval=1)
    fire([bar], Event.FIT_START, state)
    train_step(state, [bar])
    assert quiet.getvalue() == ""


# -- guards ---------------------------------------------------------------------------------
def test_guard_stop_names_step_loss_and_grad_norm():
    state, guard = make_state(), Guard(GuardConfig(on_nonfinite="stop"))
    train_step(state, [guard])
    with pytest.raises(TrainingDivergedError, match=r"step 2: non-finite loss \(loss nan"):
        train_step(state, [guard], loss_scale=math.nan)


def test_guard_skip_keeps_the_weights_and_rollback_asks_the_trainer():
    state, guard = make_state(), Guard(GuardConfig(on_nonfinite="skip"), max_consecutive=2)
    before = flat_params(state.model)
    metrics = train_step(state, [guard], loss_scale=math.inf)
    torch.testing.assert_close(flat_params(state.model), before)
    assert metrics["guard/skipped_steps"] == 1
    train_step(state, [guard], loss_scale=math.nan)
    with pytest.raises(TrainingDivergedError, match="3 bad steps in a row"):
        train_step(state, [guard], loss_scale=math.nan)
    state, guard = make_state(), Guard(GuardConfig(on_nonfinite="rollback"))
    state.step = step_result(loss=math.nan, grad_norm=1.0)
    guard.before_optimizer_step(state, HUB)
    assert "non-finite loss" in state.rollback_reason and guard.rollbacks == 1


def test_guard_loss_spike_after_the_window_fills_and_fp16_overflow_is_the_scalers():
    guard = Guard(GuardConfig(spike_factor=2.0, spike_window=3, on_spike="skip"))
    decisions = [guard.judge(loss, 1.0) for loss in [1.0, 9.0, 1.0, 1.0, 2.5, 5.0, 1.0]]
    assert decisions == [None, None, None, None, None, "skip", None]  # mean of 9,1,1 then 1,1,2.5
    assert "loss spike" in guard.reason
    again = Guard(GuardConfig(spike_factor=2.0, spike_window=3))
    again.load_state_dict(guard.state_dict())
    assert again.running_mean() == pytest.approx(guard.running_mean())
    fp16 = Guard(GuardConfig(on_nonfinite="stop"))
    assert fp16.judge(1.0, math.inf, "amp_fp16") is None
    assert fp16.judge(1.0, math.inf, "amp_bf16") == "stop"
    with pytest.raises(ValueError, match=r"on_nonfinite='halt'.*spike_factor=0.5"):
        Guard(GuardConfig(on_nonfinite="halt", spike_factor=0.5))


def _watchdog_child(scenario: str, log_path: str) -> None:
    sys.stderr = open(log_path, "w")
    state = make_state(rank=3)
    state.timestamp.batch = 4
    dog = HangWatchdog(0.3)

    def fit():  # stands for Trainer.fit
        dog.fit_start(state, HUB)
        dog.batch_start(state, HUB)
        if scenario == "raise":
            raise RuntimeError("a failure that ends fit() without FIT_END")
        if scenario == "eval":
            dog.batch_end(state, HUB)
            dog.eval_start(state, HUB)  # evaluation is not watched by default
        time.sleep(1.5)
        dog.eval_end(state, HUB)
        dog.fit_end(state, HUB)

    try:
        fit()
    except RuntimeError:
        time.sleep(1.0)
    os._exit(0)


@pytest.mark.parametrize("scenario, code", [("hang", 75), ("eval", 0), ("raise", 0)])
def test_hang_watchdog_ends_a_hung_process_naming_rank_and_step(tmp_path, scenario, code):
    log_path = str(tmp_path / "stderr.txt")
    proc = mp.get_context("fork").Process(target=_watchdog_child, args=(scenario, log_path))
    proc.start()
    proc.join(timeout=30)
    assert proc.exitcode == code
    text = open(log_path).read()
    if code:
        assert "[rank 3] hang watchdog: the training step at step 5 has taken" in text
        assert "0.3s allowance" in text and "_watchdog_child" in text  # the stacks
    else:
        assert "hang watchdog" not in text


# -- defaults and the Trainer ---------------------------------------------------------------
def test_default_callbacks_follow_the_config():
    config = TrainerConfig(max_duration="2ba", hang_timeout=60, guard={"on_nonfinite": "skip"})
    kinds = [type(cb) for cb in default_callbacks(config)]
    assert kinds == [Guard, HangWatchdog, SpeedMonitor, LRMonitor, ProgressBar]
    assert default_callbacks(config)[0].config.on_nonfinite == "skip"


class _Loader(list):
    batch_size = 4


def test_trainer_end_to_end_with_the_built_in_callbacks(tmp_path, capsys):
    torch.manual_seed(0)
    model = TinyLM()
    data = _Loader(random_lm_batch(4, 8, seed=i) for i in range(3))
    ema = EMA(decay=0.9)
    trainer = Trainer(
        model,
        data,
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        eval_dataloader=data[:1],
        max_duration="2ep",
        eval_interval="1ep",
        hang_timeout=60,
        loggers=[JSONLLogger(tmp_path / "m.jsonl")],
        callbacks=[GradClip(max_norm=0.5), ema, MemoryMonitor(), EarlyStopping(patience=5)],
    )
    trainer.fit()
    records = read_jsonl(tmp_path / "m.jsonl")
    assert records[0]["kind"] == "hyperparameters" and records[0]["config"]["hang_timeout"] == 60
    steps = [r for r in records if r["kind"] == "metrics" and "loss/train/total" in r["metrics"]]
    assert [r["step"] for r in steps] == list(range(1, 7))
    for name in ("throughput/tokens_per_sec", "lr-AdamW/group0", "grad/norm", "guard/rollbacks"):
        assert name in steps[-1]["metrics"], name
    assert sum("eval/loss" in r.get("metrics", {}) for r in records) == 2
    assert ema.num_updates == 6 and "[6/6]" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:the train dataloader has no state_dict")
def test_ema_and_guard_state_survive_a_checkpoint_resume(tmp_path):
    def run(max_duration):
        torch.manual_seed(0)
        model, callbacks = (
            TinyLM(),
            [EMA(decay=0.5), Guard(GuardConfig(spike_factor=9.0, spike_window=2))],
        )
        data = _Loader(random_lm_batch(4, 8, seed=i) for i in range(4))
        Trainer(
            model,
            data,
            torch.optim.AdamW(model.parameters(), lr=1e-2),
            max_duration=max_duration,
            save_folder=str(tmp_path / "ck"),
            save_interval="2ba",
            autoresume=True,
            loggers=[],
            default_callbacks=False,
            callbacks=callbacks,
        ).fit()
        return callbacks

    (ema, guard), (resumed_ema, resumed_guard) = run("2ba"), run("2ba")  # the second only loads
    assert resumed_ema.num_updates == 2 and resumed_guard.losses == guard.losses
    for saved, loaded in zip(
        ema.state_dict()["weights"].values(),
        resumed_ema.state_dict()["weights"].values(),
        strict=True,
    ):
        assert torch.equal(saved, loaded)


# -- FSDP2 ----------------------------------------------------------------------------------
def _fsdp_body(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)  # OpenMP used by the parent before the fork would hang here
    torch.manual_seed(0)
    reference, model = TinyLM(), TinyLM()
    model.load_state_dict(reference.state_dict())
    mesh = init_device_mesh("cpu", (world,))
    for block in model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    state = make_state(model=model)
    ema = EMA(decay=0.5)
    ema.fit_start(state, HUB)
    batches = [random_lm_batch(4, 8, seed=r) for r in range(world)]
    model.loss(model(batches[rank]), batches[rank]).backward()
    for batch in batches:  # FSDP2 averages gradients over ranks
        (reference.loss(reference(batch), batch) / world).backward()
    norm = clip_grad_norm(model, 0.1)
    state.optimizer.step()
    ema.update(model)
    full = {n: p.full_tensor() for n, p in model.named_parameters()}
    shadow = {n: w.full_tensor() for n, w in ema.state_dict()["weights"].items()}
    start = dict(reference.named_parameters())
    ema_ok = all(torch.allclose(shadow[n], 0.5 * (start[n] + full[n])) for n in full)
    again = EMA(decay=0.5)  # checkpoints give the shadow back whole, on the CPU
    again.load_state_dict({"weights": shadow, "num_updates": 1})
    again.fit_start(state, HUB)
    reloaded = {n: w.full_tensor() for n, w in again.state_dict()["weights"].items()}
    ema_ok = ema_ok and all(torch.equal(reloaded[n], shadow[n]) for n in shadow)
    return norm, total_grad_norm(reference), total_grad_norm(model), ema_ok


@pytest.mark.distributed
def test_clip_and_ema_on_fsdp2_dtensors():
    from streaming.testing.distributed import run_distributed

    results = run_distributed(_fsdp_body, world_size=2)
    for norm, reference, clipped, ema_ok in results:
        assert norm == pytest.approx(reference, rel=1e-5)
        assert clipped == pytest.approx(0.1, rel=1e-4)
        assert ema_ok
