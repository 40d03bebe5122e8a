"""composer_lite: a small trainer with FSDP2, two-way callbacks and graceful resumption.

    from composer_lite import Trainer
    Trainer(model, train_dataloader, optimizer, max_duration="1ep").fit()

The model follows the trainable-model contract (`composer_lite.protocols`); callbacks and
algorithms see and change the run's `State` at the events of `composer_lite.events`.
"""

from composer_lite.config import GuardConfig, TrainerConfig
from composer_lite.core import Algorithm, Callback, Logger, State
from composer_lite.events import Event
from composer_lite.optim import MasterWeightAdamW
from composer_lite.parallel import ParallelConfig
from composer_lite.protocols import (
    LMBatch,
    SupportsBlocks,
    SupportsFlops,
    TrainableModel,
    check_lm_batch,
    check_trainable_model,
)
from composer_lite.schedulers import Schedule
from composer_lite.time import Time, Timestamp, TimeUnit
from composer_lite.trainer import Trainer

__version__ = "0.2.2"
__all__ = [
    "Algorithm",
    "Callback",
    "Event",
    "GuardConfig",
    "LMBatch",
    "Logger",
    "MasterWeightAdamW",
    "ParallelConfig",
    "Schedule",
    "State",
    "SupportsBlocks",
    "SupportsFlops",
    "Time",
    "TimeUnit",
    "Timestamp",
    "TrainableModel",
    "Trainer",
    "TrainerConfig",
    "check_lm_batch",
    "check_trainable_model",
]
