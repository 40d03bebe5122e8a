"""Our ICL tasks as lm-eval tasks: YAML with `dataset_path: json` and local `data_files`.

    names = write_lm_eval_tasks("tasks_seed_table.yaml", "out/", data_root="icl/", tokenizer=tok)
    lm_eval.simple_evaluate(model="hf", model_args=..., tasks=list(names.values()),
                            task_manager=lm_eval.tasks.TaskManager(include_path="out/"))

Each task at each few-shot count becomes `evalkit_<label>_<N>shot`: a jsonl file of the prompts
evalkit renders (the same few-shot draws, delimiters and whitespace rules, so both tools score
the same strings) and a YAML file that tells lm-eval to read it with `target_delimiter: ""` and
no few-shot of its own. Multiple choice reports lm-eval's `acc` (raw, = evalkit's `acc`) and
`acc_norm` (per character, = evalkit's `acc_norm_chars`); schema uses lm-eval's multiple-input
form; language modeling reports `acc` (greedy match) and perplexity; generation tasks are judged
by evalkit's own rule through a `process_results` function written next to the YAML. Nothing is
downloaded: lm-eval runs them offline.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from evalkit.data import DatasetMissing, Example, parse_rows, read_lines
from evalkit.prepare import generation_budget
from evalkit.prompts import Prompt, render
from evalkit.protocols import Tokenizer
from evalkit.task_types import TASK_TYPES, Evidence
from evalkit.tasks import Issue, Task, TaskConfig, TaskSuite, load_tasks
from evalkit.tokenizer import needs_prefix_space

__all__ = ["UTILS_MODULE", "lm_eval_name", "process_generation", "write_lm_eval_tasks"]

UTILS_MODULE = "evalkit_lm_eval_utils"
_UTILS_SOURCE = '''"""Written by evalkit.lm_eval_tasks: lm-eval judges generation tasks by evalkit's rule."""

from evalkit.lm_eval_tasks import process_generation

__all__ = ["process_generation"]
'''


def lm_eval_name(task: Task) -> str:
    """The lm-eval task name of an evalkit task (`evalkit_<label>_<N>shot`)."""
    label = re.sub(r"[^A-Za-z0-9_]+", "_", task.config.label)
    return f"evalkit_{label}_{task.num_fewshot}shot"


def process_generation(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval's `process_results` for a generation task: evalkit's verdict on the output."""
    config = TaskConfig(
        label="lm-eval",
        dataset_uri="-",
        icl_task_type="generation_task_with_answers",
        cot_delimiter=doc["cot_delimiter"],
        do_normalization=doc["do_normalization"],
    )
    example = Example(line=0, contexts=(doc["prompt"],), answers=tuple(doc["answers"]))
    text = results[0]
    for stop in doc["stop"]:
        text = text.split(stop)[0]
    outcome = TASK_TYPES[config.icl_task_type].judge(Evidence(config, example, Prompt(), text=text))
    return {"acc": float(outcome.correct["acc"])}


def _rows(config: TaskConfig, examples: list[Example], prompts: list[Prompt]) -> list[dict]:
    rows = []
    for example, prompt in zip(examples, prompts, strict=True):
        row: dict[str, Any] = {"line": example.line}
        if config.icl_task_type == "generation_task_with_answers":
            row.update(
                prompt=prompt.generation,
                answers=list(example.answers),
                cot_delimiter=config.cot_delimiter,
                do_normalization=config.do_normalization,
                stop=list(config.early_stopping_criteria),
            )
        elif config.icl_task_type == "schema":
            continuations = {cont for _, cont in prompt.pairs}
            if len(continuations) != 1:
                raise ValueError(f"line {example.line}: the contexts give different continuations")
            row.update(contexts=[c for c, _ in prompt.pairs], continuation=continuations.pop())
            row["gold"] = example.gold
        elif config.icl_task_type == "multiple_choice":
            row.update(context=prompt.pairs[0][0], choices=[k for _, k in prompt.pairs])
            row["gold"] = example.gold
        else:
            row.update(context=prompt.pairs[0][0], continuation=prompt.pairs[0][1])
        rows.append(row)
    return rows


def _mean(metric: str) -> dict[str, Any]:
    return {"metric": metric, "aggregation": "mean", "higher_is_better": True}


def _spec(task: Task, data_file: str, budget: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "task": lm_eval_name(task),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": data_file}},
        "test_split": "test",
        "num_fewshot": 0,
        "target_delimiter": "",
        "metadata": {"version": 1, "evalkit_task": task.name},
    }
    kind = task.config.icl_task_type
    if kind == "multiple_choice":
        spec.update(output_type="multiple_choice", doc_to_text="context", doc_to_choice="choices")
        spec.update(doc_to_target="gold", metric_list=[_mean("acc"), _mean("acc_norm")])
    elif kind == "schema":
        spec.update(output_type="multiple_choice", doc_to_text="gold", doc_to_choice="contexts")
        spec.update(doc_to_target="continuation", metric_list=[_mean("acc")])
    elif kind == "language_modeling":
        spec.update(output_type="loglikelihood", doc_to_text="context")
        spec.update(doc_to_target="continuation")
        perplexity = {
            "metric": "perplexity",
            "aggregation": "perplexity",
            "higher_is_better": False,
        }
        spec["metric_list"] = [_mean("acc"), perplexity]
    else:
        spec.update(output_type="generate_until", doc_to_text="prompt", doc_to_target="answers")
        until = list(task.config.early_stopping_criteria)
        spec["generation_kwargs"] = {"max_gen_toks": budget, "do_sample": False}
        if until:
            spec["generation_kwargs"]["until"] = until
        spec["process_results"] = f"!function {UTILS_MODULE}.process_generation"
        spec["metric_list"] = [_mean("acc")]
    return spec


def _dump(spec: dict[str, Any]) -> str:
    text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=1000)
    # lm-eval's loader resolves `!function` tags: they must not be quoted
    return re.sub(r"'(!function [\w.]+)'", r"\1", text)


def write_lm_eval_tasks(
    tasks: str | os.PathLike[str] | list[TaskConfig] | TaskSuite,
    out_dir: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] | None = None,
    tokenizer: Tokenizer | None = None,
    prefix_space: bool | None = None,
    limit: int | None = None,
) -> tuple[dict[str, str], list[Issue]]:
    """Write lm-eval task files for every task and few-shot count into `out_dir`.

    Returns ({evalkit task name: lm-eval task name}, the tasks that could not be written).
    `prefix_space` (default: asked of `tokenizer`, else True) must match the tokenizer the
    model uses, so that the strings equal what evalkit scores."""
    if isinstance(tasks, TaskSuite):
        suite = tasks
    elif isinstance(tasks, (str, os.PathLike)):
        suite = load_tasks(tasks)
        data_root = data_root if data_root is not None else Path(tasks).resolve().parent
    else:
        suite = TaskSuite(tasks=list(tasks))
    if prefix_space is None:
        prefix_space = needs_prefix_space(tokenizer) if tokenizer is not None else True
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{UTILS_MODULE}.py").write_text(_UTILS_SOURCE)
    names, problems = {}, list(suite.problems)
    for config in suite.tasks:
        try:
            lines, where = read_lines(config.dataset_uri, data_root)
        except DatasetMissing as err:
            problems += [Issue(t.name, config.origin, str(err)) for t in config.tasks()]
            continue
        examples, bad = parse_rows(
            lines,
            where,
            config.icl_task_type,
            task=config.label,
            has_categories=config.has_categories,
        )
        problems += bad
        budget = generation_budget(config, examples, tokenizer)
        for task in config.tasks():
            try:
                prompts = render(
                    config, examples, task.num_fewshot, prefix_space=prefix_space, limit=limit
                )
                rows = _rows(config, examples[: len(prompts)], prompts)
            except ValueError as err:
                problems.append(Issue(task.name, f"{config.origin} ({where})", str(err)))
                continue
            name = lm_eval_name(task)
            data_file = (out / f"{name}.jsonl").resolve()
            data_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            (out / f"{name}.yaml").write_text(_dump(_spec(task, str(data_file), budget)))
            names[task.name] = name
    return names, problems
