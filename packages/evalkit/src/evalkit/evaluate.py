"""Evaluate a model on ICL tasks: `evaluate()` for one call, `Evaluator` to prepare once and
evaluate many checkpoints (what an in-training evaluation wraps).

    results = evaluate(model, tokenizer, tasks="tasks_seed_table.yaml", data_root="icl/")
    results.metrics()   # {"piqa/0-shot/acc_norm_tokens": 0.51, ...}

    evaluator = Evaluator(tokenizer, tasks, data_root=root, config=EvalConfig(limit=200))
    evaluator.metrics(model)   # on every rank: the same flat {name: float}

With a process group (torchrun), each rank scores a share of every task: examples are sorted by
length and dealt round-robin, ranks run the same number of forwards (uneven shares are padded with
dummy batches, so a model sharded with FSDP2 never waits in a collective), and the per-example
results are gathered, so every rank returns what one rank alone would (per-example scores agree
to float rounding; see scoring). The model is put in eval mode and given back in the mode it had.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from evalkit.generation import GenerationOptions, generate_greedy
from evalkit.hf import as_causal_lm, model_window
from evalkit.logprobs import ModelCall, Request, inspect_model
from evalkit.prepare import PreparedTask, prepare_tasks
from evalkit.protocols import check_causal_lm
from evalkit.results import EvalResults, ExampleResult, NearTie, TaskResult
from evalkit.scoring import ScoringOptions, score_requests
from evalkit.task_types import TASK_TYPES, Evidence
from evalkit.tasks import Issue, TaskConfig, TaskSuite, load_tasks
from evalkit.tokenizer import as_tokenizer

__all__ = ["EvalConfig", "Evaluator", "evaluate", "truncate"]


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How to evaluate (every field has a default that works on CPU and GPU).

    batch_size:       sequences per forward (32).
    max_batch_tokens: sequences x length per forward, at most (4096): bounds the memory of
                      models that return every position's logits.
    max_seq_len:      the model's context window; None: read from its config (max_seq_len,
                      max_position_embeddings, n_positions, ...). Contexts are cut on the left.
    pack_len:         tokens per packed row, for models that pack ("packed" sharing) (256).
    padding_side:     "right" (any causal LM) or "left" (models that take attention_mask).
    sharing:          how a context shared by several choices runs once: "auto" (the first the
                      model offers of "packed" and "kv_cache"), "packed", "kv_cache", or "none"
                      (plain batching); see evalkit.scoring.
    near_tie:         verdicts within this of flipping are listed as near ties (1e-5).
    limit:            evaluate the first N examples of each task (None: all).
    labels:           evaluate only the tasks with these labels (None: all).
    max_new_tokens:   cap on a generation task's budget (None: the task's own budget).
    progress:         show a progress bar per task (rank 0).
    """

    batch_size: int = 32
    max_batch_tokens: int = 4096
    max_seq_len: int | None = None
    pack_len: int = 256
    padding_side: str = "right"
    sharing: str = "auto"
    near_tie: float = 1e-5
    limit: int | None = None
    labels: tuple[str, ...] | None = None
    max_new_tokens: int | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        ScoringOptions(  # the same checks as the scorer's
            batch_size=self.batch_size,
            max_batch_tokens=self.max_batch_tokens,
            pack_len=self.pack_len,
            padding_side=self.padding_side,
            sharing=self.sharing,
        )
        for name in ("max_seq_len", "limit", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if isinstance(self.labels, list):
            object.__setattr__(self, "labels", tuple(self.labels))

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> EvalConfig:
        """A config from a mapping; every unknown key is named in one error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown EvalConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**options)


def truncate(context: Sequence[int], continuation: Sequence[int], window: int) -> Request | None:
    """The request the model sees in a `window`-token input: context cut on the left, the
    continuation whole (None when the continuation alone does not fit)."""
    if len(continuation) > window:
        return None
    tokens = (tuple(context) + tuple(continuation))[-(window + 1) :]
    cut = len(tokens) - len(continuation)
    return Request(tokens[:cut], tokens[cut:])


def _suite(tasks: Any) -> tuple[TaskSuite, str | None]:
    """(the tasks, the default data root: the YAML's folder) from a path, suite or configs."""
    if isinstance(tasks, TaskSuite):
        return tasks, None
    if isinstance(tasks, (str, os.PathLike)):
        return load_tasks(tasks), str(Path(tasks).resolve().parent)
    configs = list(tasks)
    bad = [c for c in configs if not isinstance(c, TaskConfig)]
    if bad:
        raise TypeError(f"tasks must be a YAML path or TaskConfigs; got {type(bad[0]).__name__}")
    return TaskSuite(tasks=configs), None


class Evaluator:
    """Prepared tasks (read, rendered and tokenized once) that evaluate any model on call."""

    def __init__(
        self,
        tokenizer: Any,
        tasks: Any,
        *,
        data_root: str | os.PathLike[str] | None = None,
        config: EvalConfig | None = None,
    ) -> None:
        self.config = config or EvalConfig()
        self.tokenizer = as_tokenizer(tokenizer)
        suite, default_root = _suite(tasks)
        suite = suite.select(self.config.labels)
        self.prepared, missing = prepare_tasks(
            suite.tasks,
            self.tokenizer,
            data_root=data_root if data_root is not None else default_root,
            limit=self.config.limit,
        )
        self.missing: list[Issue] = list(suite.problems) + missing

    def metrics(self, model: Any) -> dict[str, float]:
        """The flat {name: float} metrics of `model` on every task (the same on every rank)."""
        return self.run(model).metrics()

    def run(self, model: Any, *, name: str | None = None) -> EvalResults:
        """Evaluate `model` on every prepared task."""
        from composer_lite.dist import get_rank, get_world_size

        model = as_causal_lm(model)
        check_causal_lm(model)
        window = self.config.max_seq_len or model_window(model)
        if window is None:
            raise ValueError(
                f"{type(model).__name__} declares no context window in its config; "
                "give EvalConfig(max_seq_len=...)"
            )
        started = time.perf_counter()
        results = EvalResults(model=name or type(model).__name__, missing_tasks=list(self.missing))
        was_training = model.training
        model.eval()
        try:
            run = _Run(model, inspect_model(model), window, self, get_rank(), get_world_size())
            for prepared in self.prepared:
                results.tasks[prepared.task.name] = run.task(prepared)
        finally:
            model.train(was_training)
        results.seconds = time.perf_counter() - started
        return results


def evaluate(
    model: Any,
    tokenizer: Any,
    *,
    tasks: Any,
    data_root: str | os.PathLike[str] | None = None,
    config: EvalConfig | None = None,
    name: str | None = None,
) -> EvalResults:
    """Evaluate `model` with `tokenizer` on `tasks` (a task YAML path, or TaskConfigs); relative
    dataset URIs are read under `data_root` (default: the YAML's folder)."""
    return Evaluator(tokenizer, tasks, data_root=data_root, config=config).run(model, name=name)


@dataclass
class _Run:
    """One model's evaluation: the model, how to call it, its window and the rank's place."""

    model: Any
    call: ModelCall
    window: int
    evaluator: Evaluator
    rank: int
    world: int

    def _pad_id(self) -> int:
        tok = self.evaluator.tokenizer
        for candidate in (tok.pad_token_id, tok.eos_token_id):
            if candidate is not None:
                return candidate
        return 0

    def _inputs(self, prepared: PreparedTask) -> tuple[dict[int, Any], list[Issue]]:
        """{example index: its requests or generation prompt} of the examples that fit."""
        inputs, bad = {}, []
        budget = min(prepared.max_new_tokens, self.evaluator.config.max_new_tokens or 1 << 30)
        for i, example in enumerate(prepared.examples):
            where = f"{prepared.dataset}:{example.line}"
            if prepared.generative:
                room = self.window - budget
                if room < 1:
                    msg = (
                        f"no room: the {self.window}-token window holds no prompt next to "
                        f"a {budget}-token answer"
                    )
                    bad.append(Issue(prepared.task.name, where, msg))
                else:
                    inputs[i] = prepared.gen_prompts[i][-room:]
                continue
            requests = [truncate(c, k, self.window) for c, k in prepared.pairs[i]]
            if any(r is None for r in requests):
                longest = max(len(k) for _, k in prepared.pairs[i])
                msg = (
                    f"no room: a {longest}-token continuation does not fit the "
                    f"{self.window}-token window"
                )
                bad.append(Issue(prepared.task.name, where, msg))
            else:
                inputs[i] = requests
        return inputs, bad

    def _length(self, item: Any) -> int:
        if item and isinstance(item[0], Request):
            return max(len(r.context) + len(r.continuation) for r in item)
        return len(item)

    def task(self, prepared: PreparedTask) -> TaskResult:
        from composer_lite.dist import all_gather_object

        started = time.perf_counter()
        config = self.evaluator.config
        inputs, bad = self._inputs(prepared)
        order = sorted(inputs, key=lambda i: (-self._length(inputs[i]), i))
        mine = order[self.rank :: self.world]
        outputs = self._score(prepared, [inputs[i] for i in mine])
        gathered: dict[int, Any] = {}
        for part in all_gather_object(list(zip(mine, outputs, strict=True))):
            gathered.update(part)
        result = self._judge(prepared, gathered, config.near_tie)
        result.bad_examples = prepared.bad + bad
        result.seconds = time.perf_counter() - started
        return result

    def _score(self, prepared: PreparedTask, items: list[Any]) -> list[Any]:
        from tqdm.auto import tqdm

        config = self.evaluator.config
        pad = self._pad_id()
        lockstep = self.world > 1
        total = sum(len(x) if not prepared.generative else 1 for x in items)
        bar = tqdm(
            total=total,
            desc=prepared.task.name,
            disable=not config.progress or self.rank != 0,
            unit="req",
        )
        with bar:
            if prepared.generative:
                budget = min(prepared.max_new_tokens, config.max_new_tokens or 1 << 30)
                opts = GenerationOptions(
                    max_new_tokens=budget,
                    stop=prepared.task.config.early_stopping_criteria,
                    batch_size=config.batch_size,
                    pad_token_id=pad,
                    lockstep=lockstep,
                )
                return generate_greedy(
                    self.model,
                    items,
                    self.evaluator.tokenizer,
                    opts,
                    call=self.call,
                    on_batch=bar.update,
                )
            opts = ScoringOptions(
                batch_size=config.batch_size,
                max_batch_tokens=config.max_batch_tokens,
                pack_len=config.pack_len,
                padding_side=config.padding_side,
                sharing=config.sharing,
                pad_token_id=pad,
                lockstep=lockstep,
                max_seq_len=self.window,
            )
            return score_requests(self.model, items, opts, call=self.call, on_batch=bar.update)

    def _judge(self, prepared: PreparedTask, outputs: dict[int, Any], tol: float) -> TaskResult:
        task, kind = prepared.task, TASK_TYPES[prepared.task.config.icl_task_type]
        examples, ties = [], []
        for i in sorted(outputs):
            example, out = prepared.examples[i], outputs[i]
            scores = () if kind.generative else out
            evidence = Evidence(
                task.config,
                example,
                prepared.prompts[i],
                scores=scores,
                text=out if kind.generative else "",
                tol=tol,
            )
            outcome = kind.judge(evidence)
            where = f"{prepared.dataset}:{example.line}"
            ties += [NearTie(task.name, where, metric, gap) for metric, gap in outcome.near_ties]
            examples.append(
                ExampleResult(
                    line=example.line,
                    correct=outcome.correct,
                    logprobs=[s.logprob for s in scores],
                    n_tokens=[s.n_tokens for s in scores],
                    category=example.category,
                    text=out if kind.generative else None,
                )
            )
        metrics = {m: _mean([e.correct[m] for e in examples]) for m in kind.metrics}
        categories: dict[str, dict[str, float]] = {}
        if task.config.has_categories:
            for cat in sorted({e.category for e in examples if e.category is not None}):
                chosen = [e for e in examples if e.category == cat]
                categories[cat] = {m: _mean([e.correct[m] for e in chosen]) for m in kind.metrics}
        return TaskResult(
            name=task.name,
            label=task.config.label,
            num_fewshot=task.num_fewshot,
            task_type=task.config.icl_task_type,
            dataset=prepared.dataset,
            primary=kind.primary,
            metrics=metrics,
            n_examples=len(examples),
            categories=categories,
            near_ties=ties,
            examples=examples,
        )


def _mean(values: list[bool]) -> float:
    return fmean(values) if values else float("nan")
