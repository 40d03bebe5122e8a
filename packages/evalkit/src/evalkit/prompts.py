"""Prompts: deterministic few-shot draws and the text of every request, per task type.

The layout is llm-foundry's: `prompt_string`, then each few-shot example as
`example_delimiter + question_prelimiter + context + continuation_delimiter + answer` (the first
without the example delimiter when nothing precedes it), then the evaluated example the same way
without its answer. Then, per (context, continuation) pair to score:

- trailing whitespace of the context moves to the front of the continuation (lm-eval's rule:
  "Answer: " + "Paris" is scored as "Answer:" + " Paris", so the space belongs to the word's token);
- a continuation that still starts without whitespace gets one space when the tokenizer puts
  spaces in front of words (`needs_prefix_space`; llm-foundry's rule).

Few-shot examples of example i are drawn with `random.Random(f"{seed}/{i}")` from the other
examples of its pool (the whole file, or its category with `has_categories`): the same draw
whatever the order, batch or rank of evaluation, and never example i itself.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from evalkit.data import Example
from evalkit.tasks import TaskConfig

__all__ = ["RENDERERS", "Prompt", "fewshot_indices", "fix_pair", "render"]


@dataclass(frozen=True)
class Prompt:
    """What the model sees for one example: pairs to score, or a prompt to continue."""

    pairs: tuple[tuple[str, str], ...] = ()
    generation: str | None = None


def fewshot_indices(seed: int, position: int, pool_size: int, k: int) -> list[int]:
    """k distinct positions in range(pool_size), none equal to `position`, drawn from a generator
    seeded by (seed, position) only. Raises ValueError when the pool has fewer than k others."""
    if k > pool_size - 1:
        raise ValueError(f"num_fewshot {k} needs {k} other examples; there are {pool_size - 1}")
    rng = random.Random(f"{seed}/{position}")
    drawn = rng.sample(range(pool_size - 1), k)
    return [j + 1 if j >= position else j for j in drawn]


def fix_pair(context: str, continuation: str, prefix_space: bool) -> tuple[str, str]:
    """Move the context's trailing whitespace into the continuation; add a leading space to a
    continuation that has none when the tokenizer wants one (see the module docstring)."""
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    if prefix_space and continuation and not continuation[0].isspace():
        continuation = " " + continuation
    return stripped, continuation


def _block(config: TaskConfig, before: str, context: str) -> str:
    """One example's context, as it follows `before` (the prompt and earlier examples)."""
    lead = config.example_delimiter if before else ""
    return f"{before}{lead}{config.question_prelimiter}{context}{config.continuation_delimiter}"


def _answer(config: TaskConfig, example: Example) -> tuple[str, str]:
    """(context, answer) of `example` as a solved few-shot example."""
    if config.icl_task_type == "multiple_choice":
        return example.contexts[0], example.continuations[example.gold]
    if config.icl_task_type == "schema":
        return example.contexts[example.gold], example.continuations[0]
    if config.icl_task_type == "generation_task_with_answers":
        answer = example.answers[0]
        if example.chain_of_thought:
            answer = f"{example.chain_of_thought}{config.cot_delimiter}{answer}"
        return example.contexts[0], answer
    return example.contexts[0], example.continuations[0]


def _preamble(config: TaskConfig, shots: Sequence[Example]) -> str:
    text = config.prompt_string
    for shot in shots:
        context, answer = _answer(config, shot)
        text = _block(config, text, context) + answer
    return text


def _render_lm(config: TaskConfig, example: Example, before: str, space: bool) -> Prompt:
    context = _block(config, before, example.contexts[0])
    return Prompt(pairs=(fix_pair(context, example.continuations[0], space),))


def _render_mc(config: TaskConfig, example: Example, before: str, space: bool) -> Prompt:
    context = _block(config, before, example.contexts[0])
    return Prompt(pairs=tuple(fix_pair(context, c, space) for c in example.continuations))


def _render_schema(config: TaskConfig, example: Example, before: str, space: bool) -> Prompt:
    pairs = [
        fix_pair(_block(config, before, option), example.continuations[0], space)
        for option in example.contexts
    ]
    return Prompt(pairs=tuple(pairs))


def _render_generation(config: TaskConfig, example: Example, before: str, space: bool) -> Prompt:
    return Prompt(generation=_block(config, before, example.contexts[0]).rstrip())


# icl_task_type -> (config, example, text before it, prefix_space) -> Prompt
RENDERERS: dict[str, Callable[[TaskConfig, Example, str, bool], Prompt]] = {
    "language_modeling": _render_lm,
    "multiple_choice": _render_mc,
    "schema": _render_schema,
    "generation_task_with_answers": _render_generation,
}


def render(
    config: TaskConfig,
    examples: Sequence[Example],
    num_fewshot: int,
    *,
    prefix_space: bool,
    limit: int | None = None,
) -> list[Prompt]:
    """The prompts of the first `limit` examples (all when None), few-shot examples drawn from
    all of `examples` (within the category with `has_categories`).

    Raises ValueError when a pool is smaller than num_fewshot + 1."""
    pools: dict[str | None, list[int]] = {}
    for i, example in enumerate(examples):
        pools.setdefault(example.category if config.has_categories else None, []).append(i)
    position = {i: p for pool in pools.values() for p, i in enumerate(pool)}
    render_one = RENDERERS[config.icl_task_type]
    prompts = []
    for i, example in enumerate(examples[:limit] if limit is not None else examples):
        pool = pools[example.category if config.has_categories else None]
        if num_fewshot > len(pool) - 1:
            where = f"category {example.category!r}" if config.has_categories else "the dataset"
            raise ValueError(
                f"num_fewshot {num_fewshot} is larger than {where} allows: it has "
                f"{len(pool)} examples, so {len(pool) - 1} others to draw from"
            )
        picks = fewshot_indices(config.fewshot_random_seed, position[i], len(pool), num_fewshot)
        before = _preamble(config, [examples[pool[p]] for p in picks])
        prompts.append(render_one(config, example, before, prefix_space))
    return prompts
