"""composer_lite: a small trainer with FSDP2, two-way callbacks and graceful resumption.

So far this package holds its contracts with models and data (`composer_lite.protocols`);
the Trainer itself is not built yet.
"""

from composer_lite.protocols import (
    LMBatch,
    SupportsBlocks,
    SupportsFlops,
    TrainableModel,
    check_lm_batch,
    check_trainable_model,
)

__version__ = "0.0.1"
__all__ = [
    "LMBatch",
    "SupportsBlocks",
    "SupportsFlops",
    "TrainableModel",
    "check_lm_batch",
    "check_trainable_model",
]
