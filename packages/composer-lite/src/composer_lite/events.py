"""The events of a training run, documented by the loop they instrument.

    INIT                              # Trainer.__init__, after the model is built (model surgery)
    (checkpoint loaded, if any)
    FIT_START
    while not done:
        EPOCH_START
        for batch in train_dataloader:
            BATCH_START                   # algorithms may rewrite state.batch
            for microbatch in batch:
                AFTER_FORWARD             # state.outputs
                AFTER_LOSS                # state.loss (may be rewritten); weighted by tokens
                AFTER_BACKWARD
            BEFORE_OPTIMIZER_STEP         # gradients complete; state.step (clipping, guards)
            optimizer.step(); scheduler.step()   # or skip, or roll back, as callbacks asked
            BATCH_END                     # timestamp advanced; metrics logged
            if eval due: EVAL_START (eval loss, then evaluators) EVAL_END
            if checkpoint due: CHECKPOINT (after it is written)
        EPOCH_END
    FIT_END

Algorithms run before callbacks at every event; both run in the order given.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Event"]


class Event(StrEnum):
    INIT = "init"
    FIT_START = "fit_start"
    EPOCH_START = "epoch_start"
    BATCH_START = "batch_start"
    AFTER_FORWARD = "after_forward"
    AFTER_LOSS = "after_loss"
    AFTER_BACKWARD = "after_backward"
    BEFORE_OPTIMIZER_STEP = "before_optimizer_step"
    BATCH_END = "batch_end"
    EVAL_START = "eval_start"
    EVAL_END = "eval_end"
    CHECKPOINT = "checkpoint"
    EPOCH_END = "epoch_end"
    FIT_END = "fit_end"
