"""composer_lite: a small trainer with FSDP2, two-way callbacks and graceful resumption.

    from composer_lite import Trainer
    Trainer(model, train_dataloader, optimizer, max_duration="1ep").fit()

The model follows the trainable-model contract (`composer_lite.protocols`); callbacks and
algorithms see and change the run's `State` at the events of `composer_lite.events` (the step's
results in `state.step`, a `StepResult`); evaluators (`Evaluator`) run at its evaluation points.
"""

from composer_lite.config import GuardConfig, TrainerConfig
from composer_lite.core import Algorithm, Callback, Logger, State, StepResult
from composer_lite.decoupled import DecoupledAdamW, DecoupledLionW
from composer_lite.events import Event
from composer_lite.optim import MasterWeightAdamW
from composer_lite.parallel import ParallelConfig
from composer_lite.protocols import (
    Evaluator,
    LMBatch,
    SupportsBlocks,
    SupportsFlops,
    SupportsMetrics,
    TrainableModel,
    check_lm_batch,
    check_trainable_model,
)
from composer_lite.schedulers import Schedule
from composer_lite.time import Time, Timestamp, TimeUnit
from composer_lite.trainer import Trainer

__version__ = "0.4.2"
__all__ = [
    "Algorithm",
    "Callback",
    "DecoupledAdamW",
    "DecoupledLionW",
    "Evaluator",
    "Event",
    "GuardConfig",
    "LMBatch",
    "Logger",
    "MasterWeightAdamW",
    "ParallelConfig",
    "Schedule",
    "State",
    "StepResult",
    "SupportsBlocks",
    "SupportsFlops",
    "SupportsMetrics",
    "Time",
    "TimeUnit",
    "Timestamp",
    "TrainableModel",
    "Trainer",
    "TrainerConfig",
    "check_lm_batch",
    "check_trainable_model",
]
