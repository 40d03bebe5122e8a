"""Label smoothing: the training loss becomes cross-entropy against smoothed targets.

    LabelSmoothing(smoothing=0.1)

At AFTER_LOSS it replaces `state.loss` with `smoothed_cross_entropy` of `state.outputs` (logits
(B, T, V), or an object with `.logits`) against `state.microbatch["labels"]` (B, T), averaged
over the labels that are not `ignore_index` (-100), like the model's own loss, so the Trainer's
token weighting of microbatches still holds. Evaluation is unchanged (it fires no AFTER_LOSS).

Shift convention: our LM batch holds labels already aligned with the positions that predict
them (label t is the target of logits t), so `shift_labels=False` is the default. Models in
the MPT / llm-foundry style keep `labels == input_ids` and shift inside the loss, comparing
logits[:, :-1] with labels[:, 1:]: use `shift_labels=True` for those (and let the model's
`num_loss_tokens` count labels[:, 1:], as its own loss does).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from composer_lite.core import Algorithm, Logger, State
from composer_lite.events import Event

__all__ = ["LabelSmoothing", "smoothed_cross_entropy"]


def smoothed_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    smoothing: float,
    *,
    shift_labels: bool = False,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Mean over counted targets of (1 - s) * NLL(label) + s * mean over classes of NLL(class).

    logits (B, T, V) and labels (B, T); computed in float32 whatever the logits' dtype.
    """
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"expected logits (B, T, V) and labels (B, T); got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if shift_labels:
        logits, labels = logits[:, :-1], labels[:, 1:]  # position t predicts token t + 1
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),  # (B*T, V)
        labels.reshape(-1),  # (B*T,)
        ignore_index=ignore_index,
        label_smoothing=smoothing,
    )


class LabelSmoothing(Algorithm):
    """Replace the training loss with label-smoothed cross-entropy (see the module docstring).

    smoothing:    the probability mass spread evenly over all classes, in [0, 1).
    shift_labels: compare logits[:, :-1] with labels[:, 1:] (MPT / llm-foundry batches).
    """

    def __init__(
        self, *, smoothing: float = 0.1, shift_labels: bool = False, ignore_index: int = -100
    ) -> None:
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {smoothing!r}")
        self.smoothing, self.shift_labels, self.ignore_index = smoothing, shift_labels, ignore_index

    def match(self, event: Event, state: State) -> bool:
        return event is Event.AFTER_LOSS

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        logits = _logits(state.outputs)
        batch = state.microbatch
        if not (isinstance(batch, dict) and isinstance(batch.get("labels"), torch.Tensor)):
            raise ValueError(
                "LabelSmoothing needs state.microbatch['labels'] (B, T); got "
                f"{type(batch).__name__} with keys {sorted(batch) if isinstance(batch, dict) else '-'}"
            )
        state.loss = smoothed_cross_entropy(
            logits,
            batch["labels"],
            self.smoothing,
            shift_labels=self.shift_labels,
            ignore_index=self.ignore_index,
        )


def _logits(outputs: Any) -> torch.Tensor:
    logits = getattr(outputs, "logits", outputs)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            "LabelSmoothing needs state.outputs to be logits (B, T, V) or to have .logits; got "
            f"{type(outputs).__name__}"
        )
    return logits
