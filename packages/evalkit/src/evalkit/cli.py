"""`python -m evalkit`: evaluate a model on ICL tasks and print the table; compare two results.

    python -m evalkit MODEL_DIR --tasks tasks.yaml --data-root icl/ --gauntlet gauntlet.yaml
    python -m evalkit --model-factory my_pkg.models:tiny --tokenizer tokenizer.json --tasks ...
    python -m evalkit compare a/results.json b/results.json [--gauntlet gauntlet.yaml]

Under torchrun (WORLD_SIZE > 1) every rank evaluates a share of each task (gloo on CPU, NCCL on
GPU) and rank 0 prints and writes the report.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evalkit.gauntlet import Gauntlet
    from evalkit.results import EvalResults

__all__ = ["main", "parser"]

DESCRIPTION = """\
Evaluate a causal language model on in-context-learning tasks (llm-foundry's task YAML and jsonl
format: language_modeling, multiple_choice, schema, generation_task_with_answers) and print a
markdown table of the scores, the eval gauntlet's categories when --gauntlet is given, and every
problem met (missing tasks, bad jsonl rows, near ties), each with file and line.

The model is a Hugging Face folder (config, weights, tokenizer files) or a factory: a function
`module:function` that takes no arguments and returns a model or (model, tokenizer); give
--tokenizer (a tokenizer.json or a folder) when it returns no tokenizer. Writes results.json,
report.md and, with --gauntlet and matplotlib installed, gauntlet.png into --out.

  python -m evalkit compare A.json B.json [--gauntlet G.yaml]   prints two results side by side
"""

EPILOG = """\
examples:
  python -m evalkit out/hf_model --tasks ../shared/data/eval/yamls/tasks_seed_table.yaml \\
      --data-root ../shared/data/eval/icl \\
      --gauntlet ../shared/data/eval/yamls/eval_gauntlet_v0.3.yaml --limit 100 --out eval_out
  torchrun --nproc-per-node 2 -m evalkit out/hf_model --tasks tasks.yaml --out eval_out
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evalkit",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", help="a Hugging Face model folder (or use --model-factory)")
    p.add_argument(
        "--model-factory",
        metavar="MODULE:FUNCTION",
        help="import MODULE and call FUNCTION() for a model or (model, tokenizer)",
    )
    p.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="tokenizer.json or a transformers folder (overrides the model's)",
    )
    p.add_argument(
        "--tasks", required=True, metavar="YAML", help="task YAML (llm-foundry's icl_tasks)"
    )
    p.add_argument(
        "--data-root",
        metavar="DIR_OR_URL",
        help="where relative dataset_uri live: a folder or s3://bucket/prefix "
        "(default: the task YAML's folder)",
    )
    p.add_argument(
        "--only", metavar="LABELS", help="comma-separated task labels to run (default: all)"
    )
    p.add_argument("--gauntlet", metavar="YAML", help="eval gauntlet YAML: categories and averages")
    p.add_argument("--limit", type=int, help="the first N examples of each task (default: all)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward (32)")
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=4096,
        help="sequences x length per forward, at most (4096; raise it on a GPU)",
    )
    p.add_argument(
        "--pack-len",
        type=int,
        default=256,
        help="tokens per packed row (models that pack, e.g. transformers) (256)",
    )
    p.add_argument(
        "--max-seq-len",
        type=int,
        help="the model's window (default: from its config); contexts cut on the left",
    )
    p.add_argument(
        "--sharing",
        default="auto",
        choices=["auto", "packed", "kv_cache", "none"],
        help="how a context shared by several choices runs once (auto)",
    )
    p.add_argument(
        "--padding-side",
        default="right",
        choices=["right", "left"],
        help="padding of plain batches (right: any model; left: models with a mask)",
    )
    p.add_argument("--max-new-tokens", type=int, help="cap on generation tasks' token budget")
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)"
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="weights; auto (default): a factory's model as made, a folder in bf16 on a GPU and "
        "fp32 on a CPU",
    )
    p.add_argument("--name", help="the model's name in the report (default: the folder or factory)")
    p.add_argument("--out", metavar="DIR", help="write results.json, report.md, gauntlet.png here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _compare(argv: list[str]) -> int:
    from evalkit.gauntlet import load_gauntlet
    from evalkit.report import compare

    p = argparse.ArgumentParser(
        prog="python -m evalkit compare", description="Print two results.json side by side."
    )
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--gauntlet", metavar="YAML")
    args = p.parse_args(argv)
    gauntlet = load_gauntlet(args.gauntlet) if args.gauntlet else None
    compare(args.a, args.b, gauntlet=gauntlet)
    return 0


def _device(name: str | None):
    import torch

    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare":
        return _compare(argv[1:])
    args = parser().parse_args(argv)
    if (args.model is None) == (args.model_factory is None):
        parser().error("give a model folder or --model-factory (one of them)")

    from composer_lite.dist import get_rank, init_distributed, shutdown_distributed
    from evalkit.evaluate import EvalConfig, Evaluator
    from evalkit.gauntlet import load_gauntlet
    from evalkit.loading import load_model

    device = _device(args.device)
    if (
        device.type == "cuda"
        and device.index is None
        and int(os.environ.get("WORLD_SIZE", "1")) > 1
    ):
        device = _device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}")  # one GPU per rank
    init_distributed(device, timeout_s=1800)
    gauntlet = load_gauntlet(args.gauntlet) if args.gauntlet else None
    model, tokenizer = load_model(
        pretrained=args.model,
        factory=args.model_factory,
        tokenizer=args.tokenizer,
        device=device,
        dtype=args.dtype,
    )
    if tokenizer is None:
        parser().error(f"{args.model_factory} returned no tokenizer: give --tokenizer")
    config = EvalConfig(
        batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
        pack_len=args.pack_len,
        max_seq_len=args.max_seq_len,
        sharing=args.sharing,
        padding_side=args.padding_side,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        labels=tuple(args.only.split(",")) if args.only else None,
        progress=not args.no_progress,
    )
    evaluator = Evaluator(tokenizer, args.tasks, data_root=args.data_root, config=config)
    name = args.name or Path(args.model or args.model_factory).name
    results = evaluator.run(model, name=name)
    status = _report(results, gauntlet, args.out) if get_rank() == 0 else 0
    shutdown_distributed()  # every rank waits for rank 0's report, then leaves the group
    return status


def _report(results: EvalResults, gauntlet: Gauntlet | None, out_dir: str | None) -> int:
    """Rank 0's part: print the table, write results.json, report.md and the gauntlet plot."""
    from evalkit.report import markdown, plot

    text = markdown([results], gauntlet=gauntlet)
    print(text)
    print(
        f"{results.n_examples} examples in {results.seconds:.1f} s "
        f"({results.n_examples / max(results.seconds, 1e-9):.1f} examples/s)"
    )
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        results.save(out / "results.json")
        (out / "report.md").write_text(text)
        if gauntlet is not None:
            try:
                plot([results], out / "gauntlet.png", gauntlet=gauntlet)
            except ImportError as err:
                print(f"no gauntlet.png: {err}", file=sys.stderr)
        print(f"wrote {out}/results.json and report.md")
    return 0 if results.tasks else 2
