"""From task definitions to token ids: read, check, render and tokenize each task once.

What is prepared does not depend on the model, so an `Evaluator` prepares once and evaluates many
checkpoints. Tokenization follows lm-eval's rule for causal models: a continuation's ids are the
ids of `context + continuation` after the ids of `context` (so a word boundary is tokenized as in
the full text), and an empty context is replaced by the EOS token. Problems are collected, never
raised: a task that cannot run (missing file, no valid rows, too few rows for its few-shot count)
becomes a missing-task `Issue`; a row that cannot be scored (bad JSON or fields, a gold index
outside the choices, a continuation with no tokens) a bad-example `Issue`, both with file:line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from evalkit.data import DatasetMissing, Example, parse_rows, read_lines
from evalkit.prompts import Prompt, render
from evalkit.protocols import Tokenizer
from evalkit.task_types import TASK_TYPES
from evalkit.tasks import Issue, Task, TaskConfig
from evalkit.tokenizer import encode_many, needs_prefix_space

__all__ = [
    "COT_BUFFER",
    "PreparedTask",
    "encode_pairs",
    "generation_budget",
    "prepare_tasks",
]

# Extra generation budget with chain of thought (llm-foundry's _MAX_ANSWER_BUFFER_LENGTH).
COT_BUFFER = 10

Ids = tuple[int, ...]


@dataclass
class PreparedTask:
    """A task ready to score: its examples, prompts and token ids (one entry per example)."""

    task: Task
    dataset: str
    examples: list[Example]
    prompts: list[Prompt]
    pairs: list[list[tuple[Ids, Ids]]] = field(default_factory=list)  # scored types
    gen_prompts: list[Ids] = field(default_factory=list)  # generation
    max_new_tokens: int = 0
    bad: list[Issue] = field(default_factory=list)

    @property
    def generative(self) -> bool:
        return TASK_TYPES[self.task.config.icl_task_type].generative


def encode_pairs(tokenizer: Tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[Ids, Ids]]:
    """(context ids, continuation ids) of each pair, by lm-eval's rule (module docstring)."""
    contexts = sorted({c for c, _ in pairs if c})
    context_ids = dict(zip(contexts, encode_many(tokenizer, contexts), strict=True))
    whole = iter(encode_many(tokenizer, [c + k for c, k in pairs if c]))
    out = []
    for context, continuation in pairs:
        if context:
            ctx = tuple(context_ids[context])
            out.append((ctx, tuple(next(whole)[len(ctx) :])))
            continue
        cont = tuple(tokenizer.encode(continuation))
        eos = tokenizer.eos_token_id
        if eos is not None and (not cont or cont[0] != eos):
            out.append(((eos,), cont))
        else:  # no EOS to condition on: the first token becomes the context
            out.append((cont[:1], cont[1:]))
    return out


def generation_budget(
    config: TaskConfig, examples: list[Example], tokenizer: Tokenizer | None
) -> int:
    """llm-foundry's generation budget: the longest answer or alias in tokens (+ a buffer with
    chain of thought); `max_new_tokens` of the task wins when set (64 without a tokenizer)."""
    if config.max_new_tokens is not None or tokenizer is None:
        return config.max_new_tokens or 64
    texts = []
    for ex in examples:
        lead = f"{ex.chain_of_thought}{config.cot_delimiter}" if ex.chain_of_thought else ""
        texts.extend(lead + a for a in ex.answers)
    longest = max((len(ids) for ids in encode_many(tokenizer, texts)), default=1)
    return max(longest, 1) + (COT_BUFFER if config.cot_delimiter else 0)


def _tokenize(prepared: PreparedTask, tokenizer: Tokenizer) -> None:
    """Fill token ids; an example with an empty prompt or continuation moves to `bad`."""
    if prepared.generative:
        ids = [
            tuple(p) for p in encode_many(tokenizer, [p.generation or "" for p in prepared.prompts])
        ]
        keep = [i for i, prompt in enumerate(ids) if prompt]
        prepared.gen_prompts = [ids[i] for i in keep]
        problem = "the prompt encodes to no tokens (nothing to continue)"
    else:
        flat = iter(encode_pairs(tokenizer, [pair for p in prepared.prompts for pair in p.pairs]))
        pairs = [[next(flat) for _ in prompt.pairs] for prompt in prepared.prompts]
        keep = [i for i, example in enumerate(pairs) if all(cont for _, cont in example)]
        prepared.pairs = [pairs[i] for i in keep]
        problem = "a continuation encodes to no tokens (nothing to score)"
    for i in sorted(set(range(len(prepared.prompts))) - set(keep)):
        where = f"{prepared.dataset}:{prepared.examples[i].line}"
        prepared.bad.append(Issue(prepared.task.name, where, problem))
    prepared.examples = [prepared.examples[i] for i in keep]
    prepared.prompts = [prepared.prompts[i] for i in keep]


def _prepare_config(
    config: TaskConfig,
    tokenizer: Tokenizer,
    data_root: str | os.PathLike[str] | None,
    limit: int | None,
    prefix_space: bool,
) -> tuple[list[PreparedTask], list[Issue]]:
    tasks = config.tasks()
    try:
        lines, where = read_lines(config.dataset_uri, data_root)
    except DatasetMissing as err:
        return [], [Issue(t.name, config.origin, str(err)) for t in tasks]
    examples, bad = parse_rows(
        lines, where, config.icl_task_type, task=config.label, has_categories=config.has_categories
    )
    if not examples:
        first = f"; the first: {bad[0]}" if bad else ""
        msg = f"{where} has no valid example ({len(bad)} bad rows{first})"
        return [], [Issue(t.name, config.origin, msg) for t in tasks]
    prepared, missing = [], []
    budget = (
        generation_budget(config, examples, tokenizer)
        if TASK_TYPES[config.icl_task_type].generative
        else 0
    )
    for task in tasks:
        try:
            prompts = render(
                config, examples, task.num_fewshot, prefix_space=prefix_space, limit=limit
            )
        except ValueError as err:
            missing.append(Issue(task.name, f"{config.origin} ({where})", str(err)))
            continue
        chosen = examples[: len(prompts)]
        one = PreparedTask(task, where, chosen, prompts, max_new_tokens=budget)
        one.bad = [Issue(task.name, b.location, b.message) for b in bad]
        _tokenize(one, tokenizer)
        prepared.append(one)
    return prepared, missing


def prepare_tasks(
    configs: list[TaskConfig],
    tokenizer: Tokenizer,
    *,
    data_root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> tuple[list[PreparedTask], list[Issue]]:
    """(the tasks ready to run, the tasks that cannot run) for every few-shot count of every
    config; `limit` keeps the first examples of each task (few-shot draws still use all)."""
    prefix_space = needs_prefix_space(tokenizer)
    prepared, missing = [], []
    for config in configs:
        ready, problems = _prepare_config(config, tokenizer, data_root, limit, prefix_space)
        prepared += ready
        missing += problems
    return prepared, missing
