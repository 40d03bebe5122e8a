"""Built-in algorithms: they change the run at one event (the model, the batch, or the loss).

    from composer_lite.algorithms import LabelSmoothing, LowPrecisionLayerNorm, SeqLengthWarmup
    Trainer(model, loader, optimizer, max_duration="1ep",
            algorithms=[LowPrecisionLayerNorm(), SeqLengthWarmup(duration="0.3dur")])

Each has its plain function next to it (`smoothed_cross_entropy`, `apply_low_precision_layernorm`,
`truncate_batch` / `warmup_length`) for use without a Trainer.
"""

from composer_lite.algorithms.label_smoothing import LabelSmoothing, smoothed_cross_entropy
from composer_lite.algorithms.low_precision_layernorm import (
    LowPrecisionLayerNorm,
    LPLayerNorm,
    apply_low_precision_layernorm,
)
from composer_lite.algorithms.seq_length_warmup import (
    SeqLengthWarmup,
    truncate_batch,
    warmup_length,
)

__all__ = [
    "LPLayerNorm",
    "LabelSmoothing",
    "LowPrecisionLayerNorm",
    "SeqLengthWarmup",
    "apply_low_precision_layernorm",
    "smoothed_cross_entropy",
    "truncate_batch",
    "warmup_length",
]
