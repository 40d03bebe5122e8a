"""What makes an example correct, per task type, and which metric each task type reports first.

- language_modeling: `acc`, the greedy continuation equals the gold one (every continuation token
  is the argmax; lm-eval's `is_greedy`).
- multiple_choice: the highest-scoring choice is the gold one, three ways:
  `acc` by the raw sum of log-probabilities (lm-eval's `acc`), `acc_norm_tokens` by the mean per
  continuation token (llm-foundry's accuracy, the one the gauntlet uses: primary), and
  `acc_norm_chars` by log-probability per character of the continuation text (lm-eval's
  `acc_norm`, which divides by `len(choice)`).
- schema: the gold context gives the shared continuation the highest score (`acc`,
  `acc_norm_tokens`; primary `acc_norm_tokens` as llm-foundry, equal to `acc` when the
  continuation has the same tokens after every context).
- generation_task_with_answers: `acc`, the generated text (cut at the first stop sequence; with
  `cot_delimiter`, the part after its last occurrence; stripped) starts with the answer or an
  alias, after llm-foundry's normalization (lower case, no punctuation, no articles, single
  spaces) when `do_normalization`.

A verdict is a near tie when a change smaller than `tol` in the compared values could flip it:
|gold - best other| < tol for choices, |margin| < tol for a greedy match. Reports list them.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from evalkit.data import Example
from evalkit.logprobs import Score
from evalkit.prompts import Prompt
from evalkit.tasks import TaskConfig

__all__ = ["TASK_TYPES", "Evidence", "Outcome", "TaskType", "normalize_answer"]


@dataclass(frozen=True)
class Evidence:
    """What a judge sees of one example: its row, its prompt, and scores or generated text."""

    config: TaskConfig
    example: Example
    prompt: Prompt
    scores: Sequence[Score] = ()
    text: str = ""
    tol: float = 1e-5


@dataclass(frozen=True)
class Outcome:
    """Verdicts per metric, and the metrics whose verdict is a near tie (with the gap)."""

    correct: dict[str, bool]
    near_ties: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class TaskType:
    """A task type's metrics (the first is not necessarily primary), primary metric, whether it
    generates text, and its judge."""

    metrics: tuple[str, ...]
    primary: str
    generative: bool
    judge: Callable[[Evidence], Outcome]


def _choose(values: Sequence[float], gold: int, tol: float) -> tuple[bool, float | None]:
    """(gold has the highest value (first of equals wins, as argmax), gap if a near tie)."""
    pick = max(range(len(values)), key=lambda i: (values[i], -i))
    others = [v for i, v in enumerate(values) if i != gold]
    gap = values[gold] - max(others)
    return pick == gold, (gap if abs(gap) < tol else None)


def _judge_choices(evidence: Evidence, metrics: tuple[str, ...]) -> Outcome:
    scores, tol = evidence.scores, evidence.tol
    values = {
        "acc": [s.logprob for s in scores],
        "acc_norm_tokens": [s.logprob / s.n_tokens for s in scores],
        "acc_norm_chars": [
            s.logprob / max(len(cont), 1)
            for s, (_, cont) in zip(scores, evidence.prompt.pairs, strict=True)
        ],
    }
    correct, ties = {}, []
    for metric in metrics:
        correct[metric], gap = _choose(values[metric], evidence.example.gold, tol)
        if gap is not None:
            ties.append((metric, gap))
    return Outcome(correct, tuple(ties))


def _judge_lm(evidence: Evidence) -> Outcome:
    score = evidence.scores[0]
    tie = (("acc", score.margin),) if abs(score.margin) < evidence.tol else ()
    return Outcome({"acc": score.greedy}, tie)


_PUNCTUATION = set(string.punctuation) | {"‘", "’", "´", "`"}


def normalize_answer(text: str) -> str:
    """llm-foundry's answer normalization: underscores to spaces, lower case, punctuation to
    spaces, articles (a, an, the) removed, whitespace collapsed."""
    text = text.replace("_", " ").lower()
    text = "".join(" " if ch in _PUNCTUATION else ch for ch in text)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _judge_generation(evidence: Evidence) -> Outcome:
    config = evidence.config
    answer = evidence.text
    if config.cot_delimiter:
        answer = answer.split(config.cot_delimiter)[-1]
    answer = answer.strip()
    labels = [a.strip() for a in evidence.example.answers]
    if config.do_normalization:
        answer = normalize_answer(answer)
        labels = [normalize_answer(a) for a in labels]
    return Outcome({"acc": any(label and answer.startswith(label) for label in labels)})


CHOICE_METRICS = ("acc", "acc_norm_tokens", "acc_norm_chars")
SCHEMA_METRICS = ("acc", "acc_norm_tokens")

# icl_task_type -> how its examples are judged (the keys are evalkit.tasks.TASK_TYPE_NAMES)
TASK_TYPES: dict[str, TaskType] = {
    "language_modeling": TaskType(("acc",), "acc", False, _judge_lm),
    "multiple_choice": TaskType(
        CHOICE_METRICS, "acc_norm_tokens", False, lambda e: _judge_choices(e, CHOICE_METRICS)
    ),
    "schema": TaskType(
        SCHEMA_METRICS, "acc_norm_tokens", False, lambda e: _judge_choices(e, SCHEMA_METRICS)
    ),
    "generation_task_with_answers": TaskType(("acc",), "acc", True, _judge_generation),
}
