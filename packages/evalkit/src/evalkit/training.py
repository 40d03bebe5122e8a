"""ICL evaluation inside a training run: composer-lite's evaluation hook (`Evaluator` protocol).

    from evalkit import Evaluator
    from evalkit.training import InTrainingEvaluator

    icl = InTrainingEvaluator(Evaluator(tokenizer, "tasks.yaml", config=EvalConfig(limit=200)),
                              causal_lm=lambda trained: trained.model)
    Trainer(model, loader, optimizer, evaluators=[icl], eval_interval="1000ba", ...)

The Trainer calls `evaluate(model, state)` at each of its evaluation points (`eval_interval`, and
at the end of a finished run) on every rank, with the model it trains (the EMA model when there is
one) in eval mode and without gradients; the metrics, named `icl/<task>/<n>-shot/<metric>`, go to
the Trainer's loggers. The tasks are read and tokenized once, when the evaluator is made.

`causal_lm` turns the trained model into a causal LM (token ids -> logits): the trainer holds a
model that takes batches. It must call the trained model itself (its root module), not a module
inside it, when the model is sharded with FSDP2: the root's forward gathers the parameters that
are not in a block.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from evalkit.evaluate import Evaluator

__all__ = ["InTrainingEvaluator"]


class InTrainingEvaluator:
    """`composer_lite.protocols.Evaluator` over an evalkit `Evaluator` (prepared tasks)."""

    def __init__(
        self,
        evaluator: Evaluator,
        *,
        causal_lm: Callable[[Any], Any] | None = None,
        prefix: str = "icl",
    ) -> None:
        if not isinstance(evaluator, Evaluator):
            raise TypeError(
                f"InTrainingEvaluator takes an evalkit.Evaluator (tasks prepared once), got"
                f" {type(evaluator).__name__}"
            )
        self.evaluator = evaluator
        self.causal_lm = causal_lm
        self.prefix = prefix.rstrip("/")

    def evaluate(self, model: Any, state: Any) -> Mapping[str, float]:
        """The ICL metrics of `model` (every rank, the same numbers)."""
        lm = self.causal_lm(model) if self.causal_lm is not None else model
        return {
            f"{self.prefix}/{name}": value for name, value in self.evaluator.metrics(lm).items()
        }
