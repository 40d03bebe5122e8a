"""Task definitions: llm-foundry's ICL task YAML as typed, checked configs.

    suite = load_tasks("tasks_seed_table.yaml")   # suite.tasks: [TaskConfig], suite.problems
    config = TaskConfig(label="copa", dataset_uri="commonsense_reasoning/copa.jsonl",
                        icl_task_type="multiple_choice")

Every key of llm-foundry's task YAML that the shipped files use is a field of `TaskConfig`, with
llm-foundry's default (see the field comments). A task whose definition is wrong (an unknown key,
an unknown `icl_task_type`, a negative few-shot count) does not stop the others: `load_tasks`
returns it as a problem naming the YAML file and line, and the report lists it as a missing task.
`num_fewshot` may be a list; each count is evaluated as its own task, named `label/N-shot`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "TASK_TYPE_NAMES",
    "Issue",
    "Task",
    "TaskConfig",
    "TaskSuite",
    "load_tasks",
    "load_yaml",
    "read_yaml",
]

# The task types evalkit implements (evalkit.task_types.TASK_TYPES holds their code).
TASK_TYPE_NAMES = (
    "language_modeling",
    "multiple_choice",
    "schema",
    "generation_task_with_answers",
)


@dataclass(frozen=True)
class Issue:
    """Something evalkit could not evaluate: where (`file:line`), which task, and why."""

    task: str
    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.task}: {self.message}"


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """One ICL task, as an entry of llm-foundry's `icl_tasks` list.

    label:                  the task's name in reports (e.g. "piqa").
    dataset_uri:            the jsonl file; relative to the data root, or absolute, or s3://...
    icl_task_type:          one of TASK_TYPE_NAMES.
    num_fewshot:            few-shot counts, an int or a list; each is evaluated separately (0).
    prompt_string:          text once before the few-shot examples ("").
    example_delimiter:      between examples, few-shot and evaluated ("\\n").
    continuation_delimiter: between a context and its continuation or answer (" ").
    question_prelimiter:    before every context, few-shot ones included ("").
    cot_delimiter:          generation: between chain of thought and answer; the answer is read
                            after its last occurrence ("").
    do_normalization:       generation: compare lower-cased text without punctuation and
                            articles (True).
    early_stopping_criteria: generation: stop sequences; the output is cut at the first (none).
    has_categories:         report a score per `category` field of the rows (False); few-shot
                            examples are then drawn from the same category.
    fewshot_random_seed:    seed of the few-shot draw (1234, llm-foundry's default).
    max_new_tokens:         generation: token budget (None: the longest answer, as llm-foundry).
    origin:                 where the task was defined, for messages ("file:line").
    """

    label: str
    dataset_uri: str
    icl_task_type: str
    num_fewshot: tuple[int, ...] = (0,)
    prompt_string: str = ""
    example_delimiter: str = "\n"
    continuation_delimiter: str = " "
    question_prelimiter: str = ""
    cot_delimiter: str = ""
    do_normalization: bool = True
    early_stopping_criteria: tuple[str, ...] = ()
    has_categories: bool = False
    fewshot_random_seed: int = 1234
    max_new_tokens: int | None = None
    origin: str = "<python>"

    def __post_init__(self) -> None:
        if isinstance(self.num_fewshot, int) and not isinstance(self.num_fewshot, bool):
            object.__setattr__(self, "num_fewshot", (self.num_fewshot,))
        if isinstance(self.num_fewshot, list):
            object.__setattr__(self, "num_fewshot", tuple(self.num_fewshot))
        if self.early_stopping_criteria is None:
            object.__setattr__(self, "early_stopping_criteria", ())
        if isinstance(self.early_stopping_criteria, list):
            object.__setattr__(self, "early_stopping_criteria", tuple(self.early_stopping_criteria))
        problems = _field_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_dict(cls, options: dict[str, Any], origin: str = "<dict>") -> TaskConfig:
        """A config from a YAML mapping; every unknown key and bad value is named in one error."""
        known = {f.name for f in dataclasses.fields(cls)} - {"origin"}
        problems = [f"unknown key {key!r}" for key in sorted(set(options) - known)]
        missing = [k for k in ("label", "dataset_uri", "icl_task_type") if k not in options]
        problems += [f"missing key {key!r}" for key in missing]
        if problems:
            raise ValueError("; ".join(problems) + f" (known keys: {sorted(known)})")
        return cls(**options, origin=origin)

    def tasks(self) -> list[Task]:
        """One `Task` per few-shot count."""
        return [Task(config=self, num_fewshot=n) for n in self.num_fewshot]


def _field_problems(config: TaskConfig) -> list[str]:
    problems = []
    for name in ("label", "dataset_uri", "icl_task_type"):
        value = getattr(config, name)
        if not isinstance(value, str) or not value:
            problems.append(f"{name} must be a non-empty string, got {value!r}")
    for name in (
        "prompt_string",
        "example_delimiter",
        "continuation_delimiter",
        "question_prelimiter",
        "cot_delimiter",
    ):
        if not isinstance(getattr(config, name), str):
            problems.append(f"{name} must be a string, got {getattr(config, name)!r}")
    for name in ("do_normalization", "has_categories"):
        if not isinstance(getattr(config, name), bool):
            problems.append(f"{name} must be true or false, got {getattr(config, name)!r}")
    counts = config.num_fewshot
    if not isinstance(counts, tuple) or not counts or not all(_is_count(n) for n in counts):
        problems.append(f"num_fewshot must be an int >= 0 or a list of them, got {counts!r}")
    stops = config.early_stopping_criteria
    if not isinstance(stops, tuple) or not all(isinstance(s, str) and s for s in stops):
        problems.append(
            f"early_stopping_criteria must be a list of non-empty strings, got {stops!r}"
        )
    if not _is_count(config.fewshot_random_seed):
        problems.append(
            f"fewshot_random_seed must be an int >= 0, got {config.fewshot_random_seed!r}"
        )
    budget = config.max_new_tokens
    if budget is not None and (not _is_count(budget) or budget < 1):
        problems.append(f"max_new_tokens must be an int >= 1 or null, got {budget!r}")
    if isinstance(config.icl_task_type, str) and config.icl_task_type not in TASK_TYPE_NAMES:
        problems.append(
            f"unknown icl_task_type {config.icl_task_type!r} (known: {', '.join(TASK_TYPE_NAMES)})"
        )
    return problems


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class Task:
    """A task at one few-shot count: what one evaluation run scores."""

    config: TaskConfig
    num_fewshot: int

    @property
    def name(self) -> str:
        return f"{self.config.label}/{self.num_fewshot}-shot"


@dataclass
class TaskSuite:
    """The tasks of a YAML file that are well defined, and the definitions that are not."""

    tasks: list[TaskConfig] = field(default_factory=list)
    problems: list[Issue] = field(default_factory=list)
    path: str | None = None

    def select(self, labels: list[str] | tuple[str, ...] | None) -> TaskSuite:
        """Only the tasks with these labels (all when None); an unknown label is a problem."""
        if labels is None:
            return self
        known = {t.label for t in self.tasks}
        problems = list(self.problems)
        where = self.path or "<tasks>"
        for label in labels:
            if label not in known:
                problems.append(Issue(label, where, f"no task labelled {label!r} in {where}"))
        chosen = [t for t in self.tasks if t.label in labels]
        return TaskSuite(tasks=chosen, problems=problems, path=self.path)


class _Mapping(dict):
    """A YAML mapping that remembers the line it starts on (1-based)."""

    line = 0


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode):
    data = _Mapping()
    data.line = node.start_mark.line + 1
    yield data
    data.update(loader.construct_mapping(node))


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def load_yaml(text: str, filename: str = "<yaml>") -> Any:
    """Parse YAML; mappings remember their line (`.line`). Syntax errors name the file and line."""
    try:
        return yaml.load(text, Loader=_LineLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        line = mark.line + 1 if mark is not None else 0
        raise ValueError(f"{filename}:{line}: not valid YAML: {err.problem}") from None


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """`load_yaml` of a local file; a missing file raises FileNotFoundError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return load_yaml(path.read_text(), str(path))


def load_tasks(source: str | os.PathLike[str] | list[Any]) -> TaskSuite:
    """The `icl_tasks` of a YAML file (or of an already parsed list), checked one by one."""
    if isinstance(source, list):
        entries, where = source, "<tasks>"
    else:
        where = str(source)
        data = read_yaml(source)
        entries = data.get("icl_tasks") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise ValueError(
                f"{where}:1: expected a list of tasks under 'icl_tasks' (llm-foundry's task YAML)"
            )
    suite = TaskSuite(path=where)
    seen: dict[str, str] = {}
    for number, entry in enumerate(entries):
        line = getattr(entry, "line", 0)
        origin = f"{where}:{line}" if line else f"{where}: task #{number}"
        label = entry.get("label") if isinstance(entry, dict) else None
        name = label if isinstance(label, str) and label else f"task #{number}"
        if not isinstance(entry, dict):
            suite.problems.append(Issue(name, origin, f"a task is a mapping, got {entry!r}"))
            continue
        try:
            config = TaskConfig.from_dict(dict(entry), origin=origin)
        except (TypeError, ValueError) as err:
            suite.problems.append(Issue(name, origin, str(err)))
            continue
        if config.label in seen:
            msg = f"label {config.label!r} is already used at {seen[config.label]}"
            suite.problems.append(Issue(name, origin, msg))
            continue
        seen[config.label] = origin
        suite.tasks.append(config)
    return suite
