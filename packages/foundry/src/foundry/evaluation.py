"""`foundry eval`: evalkit's ICL tasks (and the eval gauntlet) on one or more checkpoints.

    foundry eval models=[runs/a,hf/mpt-7b] tasks=seed_table gauntlet=v0.3 limit=100 out=eval_out
    foundry eval models=[runs/a/ep0-ba600] tasks=my_tasks.yaml data_root=icl/ out=eval_out

A model is a save folder of `foundry train` (its newest checkpoint), a checkpoint in one, or a
Hugging Face MPT directory (`foundry.checkpoints.load_model`). `tasks` is an evalkit task YAML
(llm-foundry's `icl_tasks`) or the name of one of llm-foundry's task lists (`TASK_LISTS`) under
`eval_root`, a folder in llm-foundry's `scripts/eval` layout (`yamls/` and `icl/`); the same for
`gauntlet` (`GAUNTLETS`). Each model is evaluated with its own tokenizer (its run's `tokenizer`,
or the `tokenizer.json` of the HF directory) unless `tokenizer=` gives one for all.

Every check comes before any model is loaded (`check_eval`): the task and gauntlet files, the
data root, each model's checkpoint, config and tokenizer (and that the tokenizer fits the model's
vocabulary), unique names, and outputs that exist (refused without `overwrite=true`). Then the
tasks are prepared once per tokenizer and each model is loaded, evaluated and let go in turn.
Into `out`: the resolved config (`foundry_config.yaml`), `report.md` (evalkit's task table, the
gauntlet, every problem),
`results_<name>.json` per model (evalkit's results format, which `python -m evalkit compare`
reads) and `eval.png` (the gauntlet's categories, or the task scores), each written atomically.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Literal

from foundry.validate import need, opt

__all__ = [
    "GAUNTLETS",
    "TASK_LISTS",
    "EvalCommand",
    "EvalError",
    "EvalPlan",
    "ModelPlan",
    "check_eval",
    "evaluate_models",
    "resolve_named",
    "run_command",
    "write_outputs",
]

# llm-foundry's task lists and gauntlet, by name, relative to `eval_root`.
TASK_LISTS = {"seed_table": "yamls/tasks_seed_table.yaml", "v0.3": "yamls/tasks_v0.3.yaml"}
GAUNTLETS = {"v0.3": "yamls/eval_gauntlet_v0.3.yaml"}
_NAME = re.compile(r"^[\w.@+-]+$")  # a model name is part of a file name


class EvalError(ValueError):
    """An evaluation that cannot start as configured; the message says what to change."""


@dataclass(frozen=True, kw_only=True)
class EvalCommand:
    """`foundry eval`: evalkit's ICL tasks and the gauntlet on checkpoints of ours or of HF."""

    models: list[str] = need("save folders or checkpoints of `foundry train`, or HF MPT folders")
    names: list[str] | None = opt(None, "the models' names in the report (default: folder names)")
    tasks: str = need(f"evalkit task YAML, or a name under eval_root: {', '.join(TASK_LISTS)}")
    data_root: str | None = opt(
        None,
        "folder or s3:// of the tasks' dataset_uri (default: the YAML's; names: eval_root/icl)",
    )
    gauntlet: str | None = opt(None, f"gauntlet YAML or a name: {', '.join(GAUNTLETS)}; null: none")
    eval_root: str = opt("../shared/data/eval", "llm-foundry's scripts/eval layout: yamls/, icl/")
    tokenizer: str | None = opt(None, "tokenizer for every model; null: each checkpoint's own")
    limit: int | None = opt(None, "the first N examples of each task (null: all)")
    only: list[str] | None = opt(None, "task labels to run (null: all)")
    batch_size: int = opt(32, "sequences per forward")
    max_seq_len: int | None = opt(None, "context window (null: each model's); cut on the left")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto: cuda when there is a GPU")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = opt(
        "auto", "the weights' dtype while evaluating; auto: bf16 on a GPU, fp32 on a CPU"
    )
    out: str | None = opt(None, "folder for report.md, results_<name>.json, eval.png; null: none")
    overwrite: bool = opt(False, "replace report files that exist in out")
    progress: bool = opt(True, "a progress bar per task on stderr")

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models is empty: give models=[runs/a,hf/b]")
        if self.names is not None and len(self.names) != len(self.models):
            raise ValueError(
                f"names has {len(self.names)} entries for {len(self.models)} models: one each"
            )
        for key in ("limit", "max_seq_len"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1 (or null), got {value}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True, kw_only=True)
class ModelPlan:
    """One model to evaluate: its name, where it is, what it is, and its tokenizer."""

    name: str
    path: str
    source: str  # "foundry" or "hf"
    tokenizer: str


@dataclass(frozen=True, kw_only=True)
class EvalPlan:
    """What `check_eval` found: every file exists and every model has a tokenizer."""

    tasks: str
    data_root: str | None
    gauntlet: Any  # evalkit.Gauntlet or None
    models: tuple[ModelPlan, ...]
    outputs: dict[str, str]  # what -> path, empty without `out`


def resolve_named(value: str, names: dict[str, str], eval_root: str, *, key: str) -> str:
    """A YAML path as given, or the file a name of `names` stands for under `eval_root`."""
    if value in names:
        path = os.path.join(eval_root, names[value])
        if not os.path.isfile(path):
            raise EvalError(
                f"{key}={value} is {names[value]} under eval_root={eval_root}, which does not"
                " exist: set eval_root to a folder in llm-foundry's scripts/eval layout (yamls/,"
                " icl/), or give the YAML's path"
            )
        return path
    if not os.path.isfile(value):
        raise EvalError(
            f"{key}={value}: no such file (give a YAML file, or one of the names"
            f" {', '.join(names)} under eval_root)"
        )
    return value


def _foundry_tokenizer(path: str, key: str) -> tuple[str | None, int]:
    """(the run's tokenizer or None, its model's vocabulary) of a save folder or checkpoint,
    after checking that a complete checkpoint is there; no weights are read."""
    import yaml

    from composer_lite.checkpoint import CheckpointManager
    from foundry.checkpoints import save_folder_of
    from foundry.train import CONFIG_FILE, saved_config

    try:
        folder, checkpoint = save_folder_of(path)
    except FileNotFoundError as err:
        raise EvalError(f"{key}: {err}, or a Hugging Face MPT folder") from None
    manager = CheckpointManager(folder)
    if checkpoint is not None:
        manager.inspect(checkpoint)  # raises, naming the checkpoint, when it is not complete
    elif manager.latest() is None:
        raise EvalError(f"{key}: {path} holds no complete checkpoint yet")
    config = yaml.safe_load(saved_config(folder)) or {}
    vocab = (config.get("model") or {}).get("vocab_size")
    if not isinstance(vocab, int):
        raise EvalError(f"{folder}/{CONFIG_FILE}: model.vocab_size is missing")
    return config.get("tokenizer"), vocab


def _hf_tokenizer(path: str, key: str) -> tuple[str | None, int]:
    with open(os.path.join(path, "config.json")) as f:
        vocab = json.load(f).get("vocab_size")
    if not isinstance(vocab, int):
        raise EvalError(f"{key}: {path}/config.json: vocab_size is missing (got {vocab!r})")
    has_own = os.path.isfile(os.path.join(path, "tokenizer.json"))
    return (path if has_own else None), vocab


def _default_name(path: str, source: str) -> str:
    path = path.rstrip("/")
    if source == "foundry" and not os.path.isfile(os.path.join(path, "foundry_config.yaml")):
        # a checkpoint in a save folder: the run's name and the checkpoint's
        return f"{os.path.basename(os.path.dirname(path))}_{os.path.basename(path)}"
    return os.path.basename(path) or "model"


def _plan_model(cfg: EvalCommand, index: int) -> ModelPlan:
    from foundry.checkpoints import is_hf_dir
    from foundry.tokenizer import check_vocab_fits, load_tokenizer

    path, key = cfg.models[index], f"models[{index}]"
    if not os.path.exists(path) and "://" not in path:
        raise EvalError(f"{key}: {path} does not exist")
    source = "hf" if is_hf_dir(path) else "foundry"
    reader = _hf_tokenizer if source == "hf" else _foundry_tokenizer
    own, vocab = reader(path, key)
    tokenizer = cfg.tokenizer or own
    if tokenizer is None:
        why = "has no tokenizer.json" if source == "hf" else "was trained without tokenizer="
        raise EvalError(f"{key}: {path} {why}: give tokenizer=<tokenizer.json or folder>")
    try:
        check_vocab_fits(load_tokenizer(tokenizer), vocab)
    except FileNotFoundError as err:
        where = "tokenizer" if cfg.tokenizer else f"the tokenizer of {path} (its run's tokenizer)"
        raise EvalError(f"{key}: {where}: {err}; give tokenizer=...") from None
    name = cfg.names[index] if cfg.names else _default_name(path, source)
    return ModelPlan(name=name, path=path, source=source, tokenizer=tokenizer)


def _outputs(cfg: EvalCommand, names: list[str]) -> dict[str, str]:
    if cfg.out is None:
        return {}
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise EvalError(f"out={cfg.out} is a file: out is the folder the results go in")
    files = {"config": "foundry_config.yaml", "report": "report.md", "png": "eval.png"}
    files |= {f"results:{n}": f"results_{n}.json" for n in names}
    outputs = {what: os.path.join(cfg.out, name) for what, name in files.items()}
    there = [p for p in outputs.values() if os.path.exists(p)]
    if there and not cfg.overwrite:
        raise EvalError(
            f"out={cfg.out} already holds {', '.join(sorted(there))}: pick another out, or"
            " overwrite=true to replace them"
        )
    return outputs


def check_eval(cfg: EvalCommand) -> EvalPlan:
    """Every check of `foundry eval` that needs no model loaded; an `EvalError` names the key."""
    from evalkit import load_gauntlet

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise EvalError(
            "foundry eval runs in one process; under torchrun use python -m evalkit (each rank"
            " scores a share)"
        )
    tasks = resolve_named(cfg.tasks, TASK_LISTS, cfg.eval_root, key="tasks")
    data_root = cfg.data_root
    if data_root is None and cfg.tasks in TASK_LISTS:
        data_root = os.path.join(cfg.eval_root, "icl")
    if data_root is not None and "://" not in data_root and not os.path.isdir(data_root):
        raise EvalError(f"data_root={data_root}: no such folder (the tasks' dataset_uri root)")
    gauntlet = None
    if cfg.gauntlet is not None:
        gauntlet = load_gauntlet(
            resolve_named(cfg.gauntlet, GAUNTLETS, cfg.eval_root, key="gauntlet")
        )
    models = tuple(_plan_model(cfg, i) for i in range(len(cfg.models)))
    names = [m.name for m in models]
    bad = [n for n in names if not _NAME.match(n)]
    if bad:
        raise EvalError(f"names {bad}: a name may hold letters, digits and . _ - + @ only")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise EvalError(f"two models are named {twice}: give names=[...] (one per model)")
    return EvalPlan(
        tasks=tasks,
        data_root=data_root,
        gauntlet=gauntlet,
        models=models,
        outputs=_outputs(cfg, names),
    )


def _device(cfg: EvalCommand) -> Any:
    import torch

    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def evaluate_models(plan: EvalPlan, cfg: EvalCommand) -> list[Any]:
    """Each model's `evalkit.EvalResults`, the tasks prepared once per tokenizer."""
    import torch

    from evalkit import EvalConfig, Evaluator
    from evalkit.hf import DTYPES, resolve_dtype
    from foundry.checkpoints import load_model
    from foundry.tokenizer import load_tokenizer

    config = EvalConfig(
        batch_size=cfg.batch_size,
        max_seq_len=cfg.max_seq_len,
        limit=cfg.limit,
        labels=tuple(cfg.only) if cfg.only else None,
        progress=cfg.progress,
    )
    evaluators: dict[str, Any] = {}
    results = []
    for model in plan.models:
        if model.tokenizer not in evaluators:
            tokenizer = load_tokenizer(model.tokenizer)
            evaluators[model.tokenizer] = Evaluator(
                tokenizer, plan.tasks, data_root=plan.data_root, config=config
            )
        device = _device(cfg)
        dtype = DTYPES[resolve_dtype(cfg.dtype, device)]
        loaded = load_model(model.path, device=device, dtype=dtype)
        with torch.no_grad():
            results.append(evaluators[model.tokenizer].run(loaded.model, name=model.name))
        del loaded
    return results


def _write_atomic(path: str, data: bytes) -> None:
    from streaming.storage import write_bytes_atomic

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_bytes_atomic(path, data)


def _write_png(results: list[Any], path: str, gauntlet: Any) -> None:
    from evalkit.report import plot

    folder, name = os.path.split(os.path.abspath(path))
    partial = os.path.join(folder, f".{name}.partial.png")  # savefig reads the format from it
    try:
        plot(results, partial, gauntlet=gauntlet)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def write_outputs(results: list[Any], plan: EvalPlan, table: str, config_text: str) -> list[str]:
    """The resolved config, each model's results, the report and the PNG, each atomically;
    returns what was written."""
    if not plan.outputs:
        return []
    _write_atomic(plan.outputs["config"], config_text.encode())
    written = [plan.outputs["config"]]
    for result in results:
        path = plan.outputs[f"results:{result.model}"]
        _write_atomic(path, json.dumps(result.to_dict(), indent=1).encode())
        written.append(path)
    _write_atomic(plan.outputs["report"], table.encode())
    written.append(plan.outputs["report"])
    try:
        _write_png(results, plan.outputs["png"], plan.gauntlet)
        written.append(plan.outputs["png"])
    except ImportError as err:  # matplotlib is optional
        print(f"no {plan.outputs['png']}: {err}", file=sys.stderr)
    return written


def run_command(cfg: EvalCommand, config_text: str) -> int:
    """`foundry eval`: check everything, evaluate each model, print the table, write the files."""
    from evalkit import markdown

    plan = check_eval(cfg)
    results = evaluate_models(plan, cfg)
    table = markdown(results, gauntlet=plan.gauntlet)
    print(table, flush=True)
    for path in write_outputs(results, plan, table, config_text):
        print(f"wrote {path}")
    if not any(r.tasks for r in results):
        print("foundry eval: no task could be evaluated (see Problems above)", file=sys.stderr)
        return 1
    return 0
