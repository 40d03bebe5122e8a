"""`Trainer`: the training loop. It reads top to bottom; features beyond the loop are callbacks.

    trainer = Trainer(model, train_dataloader, optimizer, max_duration="1ep",
                      device_train_microbatch_size=4, save_folder="s3://bucket/run", autoresume=True)
    trainer.fit()

The events it fires, and where, are in `composer_lite.events`.
"""

from __future__ import annotations

import logging
import os
import signal
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from composer_lite import dist
from composer_lite.checkpoint import CheckpointManager
from composer_lite.checkpointer import Checkpointer
from composer_lite.config import TrainerConfig
from composer_lite.core import Algorithm, Callback, State, StepResult
from composer_lite.evaluation import dataloader_metrics, evaluator_metrics
from composer_lite.events import Event
from composer_lite.microbatch import (
    MicrobatchSize,
    batch_size_of,
    count_input_tokens,
    count_loss_tokens,
    is_out_of_memory,
    sequence_length_of,
    split_batch,
)
from composer_lite.precision import autocast, grad_scaler
from composer_lite.protocols import Evaluator, check_evaluator, check_trainable_model
from composer_lite.training import (
    Every,
    average_gradients,
    build_scheduler,
    device_of,
    epoch_length,
    install_signal_handlers,
    move_to_device,
    place_model,
    restore_signal_handlers,
    seed_everything,
    total_grad_norm,
    warn_if_interval_never_comes,
)

__all__ = ["Trainer"]

log = logging.getLogger(__name__)


class Trainer:
    """Trains a model that follows the trainable-model contract (`composer_lite.protocols`).

    Checkpoints are its `checkpointer`'s business (`composer_lite.checkpointer`); `evaluators`
    (`composer_lite.protocols.Evaluator`) run at its evaluation points, after the eval loss.
    """

    Config = TrainerConfig

    def __init__(
        self,
        model: nn.Module,
        train_dataloader: Iterable,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        eval_dataloader: Iterable | None = None,
        evaluators: Sequence[Evaluator] = (),
        callbacks: Sequence[Callback] = (),
        algorithms: Sequence[Algorithm] = (),
        loggers: Sequence[Any] | None = None,
        config: TrainerConfig | None = None,
        **options: Any,
    ) -> None:
        check_trainable_model(model)
        for evaluator in evaluators:
            check_evaluator(evaluator)
        if config is not None and options:
            raise ValueError(
                f"give either config= or keyword options, not both (got {sorted(options)})"
            )
        self.config = cfg = config or TrainerConfig.from_dict(options)  # names composer's keys
        if optimizer is None:
            raise TypeError("Trainer needs an optimizer: the third argument, or optimizer=")
        device = device_of(cfg.device)
        rank, world = dist.init_distributed(device, cfg.dist_timeout)
        seed_everything(cfg.seed + rank, deterministic=cfg.deterministic)
        loader_batch_size = getattr(train_dataloader, "batch_size", None)
        self.microbatch = MicrobatchSize(cfg.device_train_microbatch_size, loader_batch_size)
        model, optimizer, self._sharded = place_model(
            model, optimizer, cfg.parallelism, device, world
        )
        self.state = State(
            model=model,
            optimizer=optimizer,
            max_duration=cfg.max_duration,
            train_dataloader=train_dataloader,
            eval_dataloader=eval_dataloader,
            device=device,
            precision=cfg.precision,
            rank=rank,
            world_size=world,
            run_name=cfg.run_name or os.environ.get("RUN_NAME", "run"),
        )
        self.evaluators = list(evaluators)
        self.callbacks = [*self._default_callbacks(callbacks), *callbacks]
        self.algorithms = list(algorithms)
        self.logger = self._make_logger(loggers, rank)
        self.scaler = grad_scaler(cfg.precision, device)
        self.state.timestamp.epoch_length = epoch_length(train_dataloader)
        self.state.scheduler = build_scheduler(cfg.scheduler, self.state)
        if self._evaluates():
            warn_if_interval_never_comes(
                "eval_interval", cfg.eval_interval, cfg.max_duration, self.state.timestamp
            )
        self._run(Event.INIT)
        self.checkpointer = Checkpointer(
            cfg,
            self.state,
            callbacks=self.callbacks,
            algorithms=self.algorithms,
            scaler=self.scaler,
            microbatch=self.microbatch,
        )
        resumed = self.checkpointer.resume()
        self._every_eval = Every(cfg.eval_interval, cfg.max_duration)
        self._every_save = Every(cfg.save_interval, cfg.max_duration)
        self._every_log = Every(cfg.log_interval, cfg.max_duration)
        if resumed:  # intervals count on from the resumed batch
            for every in (self._every_eval, self._every_save, self._every_log):
                every.reset(self.state.timestamp)
        self._last_eval = -1  # the batch of the last evaluation
        self._signal: int | None = None
        self.logger.log_hyperparameters(
            {**cfg.to_dict(), "world_size": world, "rank_device": str(device)}
        )

    # -- the public surface beside fit() ------------------------------------------------------
    @property
    def checkpoints(self) -> CheckpointManager | None:
        """The `CheckpointManager` of save_folder (None without one): `latest()`, `checkpoints()`."""
        return self.checkpointer.manager

    def save_checkpoint(self) -> str:
        """Save now (every rank calls it); returns the checkpoint's path or URL."""
        path = self.checkpointer.save()
        self._run(Event.CHECKPOINT)
        return path

    def load_checkpoint(self, path: str, *, weights_only: bool = False) -> None:
        """Restore a run (or only model/optimizer/scheduler for `weights_only`, as in rollback)."""
        self.checkpointer.load(path, weights_only=weights_only)

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> None:
        """Train until max_duration, a stop request, or a signal; then save and return."""
        state = self.state
        handlers = install_signal_handlers(self._on_signal) if self.config.handle_signals else {}
        try:
            self._run(Event.FIT_START)
            while not self._done():
                if state.timestamp.batch_in_epoch == 0:
                    self._run(Event.EPOCH_START)
                trained = 0
                for batch in self.checkpointer.epoch_batches():
                    self._train_batch(batch)
                    trained += 1
                    self._after_batch()
                    if self._done():
                        break
                else:
                    if trained == 0 and state.timestamp.batch_in_epoch == 0:
                        raise RuntimeError("the train dataloader yielded no batches in an epoch")
                    state.timestamp.advance_epoch()
                    self._run(Event.EPOCH_END)
                    self._after_batch(epoch_end=True)
            finished = state.stop_reason is None  # ran to max_duration, not stopped or signalled
            if finished and self._evaluates() and self._last_eval != state.timestamp.batch:
                self.evaluate()  # the final model is always evaluated, as composer does
            saved = self.checkpointer.last_saved == state.timestamp.batch
            if self.checkpointer.saving and not saved:
                self.save_checkpoint()
            self._run(Event.FIT_END)
        finally:
            restore_signal_handlers(handlers)
            self.logger.close(state)  # loggers with fit_end(state) see why the loop stopped

    def _train_batch(self, batch: Any) -> None:
        """One optimizer step. The host waits for the device once, when the guard needs the step's
        loss and gradient norm; token counts come from the batch before it is moved to the device,
        and microbatch weights stay on the device."""
        state = self.state
        state.batch = batch
        self._run(Event.BATCH_START)
        counts = self._count_tokens(state.batch)
        share = self._forward_backward(state.batch, counts[0].clamp(min=1.0))
        if state.world_size > 1 and not self._sharded:
            average_gradients(state.model, state.world_size)
        if self.scaler is not None:
            self.scaler.unscale_(state.optimizer)
        state.step = self._step_result(share, counts)
        self._run(Event.BEFORE_OPTIMIZER_STEP)
        self._apply_step()
        state.timestamp.advance_batch(state.step.samples, state.step.tokens)
        state.metrics["loss/train/total"] = state.step.loss
        state.metrics["time/batch"] = state.timestamp.batch
        state.metrics["time/token"] = state.timestamp.token  # tokens read so far (`StepResult`)
        self._run(Event.BATCH_END)

    def _count_tokens(self, batch: Any) -> torch.Tensor:
        """(loss tokens, samples, tokens read) of the global batch: one all-reduce, on the device."""
        loss_tokens = count_loss_tokens(self.state.model, batch)
        input_tokens = count_input_tokens(batch)
        read = loss_tokens if input_tokens is None else input_tokens
        return dist.all_reduce_tensor([loss_tokens, batch_size_of(batch), read], self.state.device)

    def _step_result(self, share: torch.Tensor, counts: torch.Tensor) -> StepResult:
        """The step's results, the same on every rank: one all-reduce and the step's one wait for
        the device. Every rank stops after this batch if any rank was signalled."""
        state = self.state
        reduced = dist.all_reduce_tensor([share, 1.0 if self._signal else 0.0], state.device)
        loss, signalled, loss_tokens, samples, tokens = torch.cat(
            [reduced, counts.to(reduced.device)]
        ).tolist()
        if signalled:
            name = signal.Signals(self._signal).name if self._signal else None
            state.stopped_by_signal = True
            state.stop(f"signal {name}" if name else "signal on another rank")
        return StepResult(
            loss=loss,
            grad_norm=total_grad_norm(state.model),
            tokens=int(tokens),
            loss_tokens=int(loss_tokens),
            samples=int(samples),
            seq_len=sequence_length_of(state.batch),
        )

    def _apply_step(self) -> None:
        """After BEFORE_OPTIMIZER_STEP: roll back, step, or skip the step, as callbacks asked.
        The LR schedule follows the batches, trained or not."""
        state = self.state
        rollback, state.rollback_reason = state.rollback_reason, None
        if rollback is not None:
            self.checkpointer.rollback(rollback)
            if self.scaler is not None:  # a guard may have unscaled this step's gradients
                self.scaler.update()
        elif not state.skip_step:
            if self.scaler is not None:
                self.scaler.step(state.optimizer)
                self.scaler.update()
            else:
                state.optimizer.step()
            if state.scheduler is not None:
                state.scheduler.step()
        else:
            if self.scaler is not None:
                self.scaler.update()
            if state.scheduler is not None:
                with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
                    warnings.simplefilter("ignore", UserWarning)
                    state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.skip_step = False

    def _forward_backward(self, batch: Any, total_tokens: torch.Tensor) -> torch.Tensor:
        """Forward and backward over microbatches; returns this rank's share of the step loss.

        Each microbatch's loss is weighted by its tokens over the global batch's tokens (times the
        world size, since gradients are averaged over ranks), so the gradient does not depend on
        the microbatch size. With 'auto', an out-of-memory error halves the microbatch size on
        every rank (they agree through one collective) and the batch starts over.
        """
        state, auto = self.state, self.microbatch.auto
        size = self.microbatch.rows(batch_size_of(batch))
        while True:
            try:
                share, oom = self._microbatches(batch, size, total_tokens), 0.0
            except Exception as err:
                if not (auto and is_out_of_memory(err)):
                    raise
                share, oom = None, 1.0
                state.optimizer.zero_grad(set_to_none=True)
                if state.device.type == "cuda":
                    torch.cuda.empty_cache()
            if auto:
                (oom,) = dist.all_reduce([oom], op="max", device=state.device)
            if not oom:
                return share
            if size == 1:
                raise RuntimeError("out of memory even with a microbatch of 1 sample") from None
            state.optimizer.zero_grad(set_to_none=True)
            size = self.microbatch.halve(size)
            log.warning("out of memory: device_train_microbatch_size is now %d", size)

    def _microbatches(self, batch: Any, size: int, total_tokens: torch.Tensor) -> torch.Tensor:
        state = self.state
        share = torch.zeros((), dtype=torch.float64, device=state.device)
        total_tokens = total_tokens.to(state.device, torch.float32)
        for microbatch in split_batch(batch, size):
            tokens = count_loss_tokens(state.model, microbatch)  # on the host, before the copy
            state.microbatch = microbatch = move_to_device(microbatch, state.device)
            with autocast(state.precision, state.device):
                state.outputs = state.model(microbatch)
                self._run(Event.AFTER_FORWARD)
                state.loss = state.model.loss(state.outputs, microbatch)
                self._run(Event.AFTER_LOSS)
            weight = tokens / total_tokens  # a device scalar: no wait for the host
            scaled = state.loss * (weight * state.world_size)
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            self._run(Event.AFTER_BACKWARD)
            # a microbatch with no loss token (all labels -100) adds nothing, not its 0/0 NaN
            share += torch.where(weight > 0, state.loss.detach().double() * weight.double(), 0.0)
        return share

    def _after_batch(self, epoch_end: bool = False) -> None:
        state = self.state
        # at an epoch end, what callbacks added at EPOCH_END is logged even between intervals
        if self._every_log.due(state.timestamp, epoch_end) or (epoch_end and state.metrics):
            self.logger.log_metrics(dict(state.metrics), step=state.timestamp.batch)
        state.metrics.clear()
        if self._evaluates() and self._every_eval.due(state.timestamp, epoch_end):
            self.evaluate()
        if self.checkpointer.saving and (
            self._every_save.due(state.timestamp, epoch_end) or state.stop_reason
        ):
            self.save_checkpoint()

    def _done(self) -> bool:
        state = self.state
        return state.stop_reason is not None or state.timestamp.reached(
            state.max_duration, state.max_duration
        )

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Evaluate on every rank: the token-weighted loss over the eval dataloader (and the
        model's optional `metrics`), if there is one, then each evaluator's metrics; they become
        `state.eval_metrics` and are logged. The model evaluated is `state.eval_model` when set,
        else `state.model` (with an EMA callback, it holds the EMA weights from EVAL_START to
        EVAL_END)."""
        state = self.state
        if not self._evaluates():
            raise ValueError(
                "nothing to evaluate: the Trainer has no eval_dataloader and no evaluators"
            )
        self._run(Event.EVAL_START)
        model = state.eval_model or state.model
        was_training = model.training
        model.eval()
        metrics: dict[str, float] = {}
        with torch.no_grad():
            if state.eval_dataloader is not None:
                limit = self.config.eval_subset_num_batches
                metrics = dataloader_metrics(model, state.eval_dataloader, state, max_batches=limit)
            metrics.update(evaluator_metrics(self.evaluators, model, state, given=metrics))
        model.train(was_training)
        state.eval_metrics = metrics
        self.logger.log_metrics(state.eval_metrics, step=state.timestamp.batch)
        self._last_eval = state.timestamp.batch
        self._run(Event.EVAL_END)
        return state.eval_metrics

    def _evaluates(self) -> bool:
        """Whether there is anything to evaluate: an eval dataloader or an evaluator."""
        return self.state.eval_dataloader is not None or bool(self.evaluators)

    # -- set-up helpers -----------------------------------------------------------------------
    def _on_signal(self, signum: int) -> None:
        log.warning(
            "received %s: finishing the batch, saving, stopping", signal.Signals(signum).name
        )
        self._signal = signum

    def _run(self, event: Event) -> None:
        for algorithm in self.algorithms:
            if algorithm.match(event, self.state):
                algorithm.apply(event, self.state, self.logger)
        for callback in self.callbacks:
            callback.run_event(event, self.state, self.logger)

    def _default_callbacks(self, given: Sequence[Callback]) -> list[Callback]:
        """The guard (and hang watchdog) always; the monitors unless default_callbacks is off.
        A callback of the same type that the caller gives replaces the default one."""
        from composer_lite.callbacks import guard_callbacks, monitor_callbacks

        monitors = monitor_callbacks(self.config) if self.config.default_callbacks else []
        return [
            cb
            for cb in [*guard_callbacks(self.config), *monitors]
            if not any(type(g) is type(cb) for g in given)
        ]

    def _make_logger(self, loggers: Sequence[Any] | None, rank: int) -> Any:
        from composer_lite.loggers import ConsoleLogger, LoggerHub

        return LoggerHub(
            list(loggers) if loggers is not None else [ConsoleLogger(every=100)], rank=rank
        )
