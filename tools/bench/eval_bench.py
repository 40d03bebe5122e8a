"""evalkit against lm-eval's `hf` model: examples/s on the same transformers model and task.

    .venv/bin/python tools/bench/eval_bench.py                # PIQA's first 500 rows, 0-shot
    .venv/bin/python tools/bench/eval_bench.py --rows 100 --repeats 1 --lm-eval-batch-sizes 1

One process builds a GPT-2-shaped transformers model (256 wide, 4 layers, 4 heads, seeded, the
NeoX tokenizer's 50,277-token vocabulary), saves it to a temporary folder, writes the task as an
lm-eval task with `evalkit.lm_eval_tasks` (the same prompt strings for both), then alternates
runs: lm-eval's own `HFLM` (`lm_eval.simple_evaluate`, per lm-eval batch size) and evalkit
(`Evaluator` built and run: reading, rendering, tokenizing, scoring). Each timed run includes
the task's data preparation and excludes model loading. It checks that both give the same
accuracies (raw and per-character) and, against one untimed lm-eval run with
`softmax_dtype=float64` (lm-eval's default sums per-token log-probabilities in fp32, which alone
rounds by ~1e-4 on sums near -500), per-choice log-likelihoods within 1e-4. Prints a table
(medians over the repeats) and writes JSON. Needs ../shared/data (the tokenizer and PIQA).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def build_model(folder: Path, tokenizer_file: Path, seed: int):
    import torch
    import transformers

    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_embd=256,
        n_layer=4,
        n_head=4,
        vocab_size=len(tok),
        n_positions=2048,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def run_lm_eval(model, tok, task: str, include: Path, batch_size: int, rows: int, softmax=None):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(
        pretrained=model, tokenizer=tok, batch_size=batch_size, device="cpu", softmax_dtype=softmax
    )
    # only our task folder is indexed (lm-eval's 10,000+ built-in YAML files are not read)
    manager = TaskManager(include_path=str(include), include_defaults=False)
    started = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm, tasks=[task], task_manager=manager, log_samples=True, limit=rows
    )
    seconds = time.perf_counter() - started
    metrics = out["results"][task]
    lls = {s["doc_id"]: [r[0] for r in s["filtered_resps"]] for s in out["samples"][task]}
    return seconds, {"acc": metrics["acc,none"], "acc_norm_chars": metrics["acc_norm,none"]}, lls


def run_evalkit(model, tok, config, batch_size: int, rows: int):
    import evalkit

    started = time.perf_counter()
    evaluator = evalkit.Evaluator(
        tok, [config], config=evalkit.EvalConfig(limit=rows, batch_size=batch_size)
    )
    result = evaluator.run(model)
    seconds = time.perf_counter() - started
    task = next(iter(result.tasks.values()))
    lls = {i: e.logprobs for i, e in enumerate(task.examples)}
    return seconds, dict(task.metrics), lls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=500, help="first N rows of the task (500)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--lm-eval-batch-sizes", default="1,32", help="lm-eval batch sizes")
    parser.add_argument("--batch-size", type=int, default=32, help="evalkit batch size (32)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default)")
    parser.add_argument("--out", default=str(ROOT / "tools/bench/out/eval_bench.json"))
    parser.add_argument(
        "--no-float64-check",
        action="store_true",
        help="skip the untimed lm-eval run in float64 that checks log-likelihoods",
    )
    args = parser.parse_args(argv)
    tokenizer_file = SHARED / "tokenizers/gpt-neox-20b/tokenizer.json"
    piqa = SHARED / "eval/icl/commonsense_reasoning/piqa.jsonl"
    if not tokenizer_file.is_file() or not piqa.is_file():
        print(f"eval_bench needs {tokenizer_file} and {piqa} (../shared/data)", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    import evalkit
    from evalkit.lm_eval_tasks import write_lm_eval_tasks

    if args.threads:
        torch.set_num_threads(args.threads)
    config = evalkit.TaskConfig(
        label="piqa",
        dataset_uri=str(piqa),
        icl_task_type="multiple_choice",
        continuation_delimiter="\nAnswer: ",
    )
    sizes = [int(s) for s in args.lm_eval_batch_sizes.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        model, tok = build_model(Path(tmp) / "model", tokenizer_file, seed=0)
        names, problems = write_lm_eval_tasks(
            [config], Path(tmp) / "tasks", tokenizer=evalkit.as_tokenizer(tok), limit=args.rows
        )
        assert not problems, problems
        task = names["piqa/0-shot"]
        times: dict[str, list[float]] = {f"lm-eval hf, batch {b}": [] for b in sizes}
        times[f"evalkit, batch {args.batch_size}"] = []
        scores, lls = {}, {}
        exact = None
        if not args.no_float64_check:  # lm-eval sums fp32 log-probs by default: ~1e-4 rounding
            exact = run_lm_eval(model, tok, task, Path(tmp) / "tasks", 32, args.rows, "float64")[2]
        for _ in range(args.repeats):
            for b in sizes:
                name = f"lm-eval hf, batch {b}"
                sec, scores[name], lls[name] = run_lm_eval(
                    model, tok, task, Path(tmp) / "tasks", b, args.rows
                )
                times[name].append(sec)
            name = f"evalkit, batch {args.batch_size}"
            sec, scores[name], lls[name] = run_evalkit(
                model, tok, config, args.batch_size, args.rows
            )
            times[name].append(sec)
    ours = f"evalkit, batch {args.batch_size}"
    rows = []
    for name, secs in times.items():
        median = statistics.median(secs)
        diff = max(
            abs(a - b) for i in lls[ours] for a, b in zip(lls[ours][i], lls[name][i], strict=True)
        )
        rows.append(
            {
                "run": name,
                "seconds": median,
                "examples_per_s": args.rows / median,
                "acc": scores[name]["acc"],
                "acc_norm_chars": scores[name]["acc_norm_chars"],
                "max_ll_diff_vs_evalkit": diff,
                "all_seconds": secs,
            }
        )
    best_lm = max(r["examples_per_s"] for r in rows if r["run"] != ours)
    speed = next(r["examples_per_s"] for r in rows if r["run"] == ours)
    print(
        f"PIQA first {args.rows} rows, 0-shot, {torch.get_num_threads()} threads, "
        f"{args.repeats} rounds (median)"
    )
    print(f"{'run':<24} {'ex/s':>8} {'s':>8} {'acc':>7} {'acc_norm':>9} {'max |dLL|':>10}")
    for r in rows:
        print(
            f"{r['run']:<24} {r['examples_per_s']:>8.1f} {r['seconds']:>8.2f} {r['acc']:>7.3f} "
            f"{r['acc_norm_chars']:>9.3f} {r['max_ll_diff_vs_evalkit']:>10.2e}"
        )
    print(f"evalkit / best lm-eval: {speed / best_lm:.2f}x")
    same = all(
        r["acc"] == rows[-1]["acc"] and r["acc_norm_chars"] == rows[-1]["acc_norm_chars"]
        for r in rows
    )
    close = True
    if exact is not None:
        worst = max(
            abs(a - b) for i in lls[ours] for a, b in zip(lls[ours][i], exact[i], strict=True)
        )
        close = worst < 1e-4
        print(f"per-choice log-likelihoods against lm-eval in float64: max |dLL| {worst:.2e}")
    print(f"equal accuracies: {same}; log-likelihoods within 1e-4 of lm-eval float64: {close}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    report = {"rows": rows, "ratio_vs_best_lm_eval": speed / best_lm, "equal": same and close}
    report["max_ll_diff_vs_lm_eval_float64"] = worst if exact is not None else None
    report["threads"] = torch.get_num_threads()
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0 if same and close else 1


if __name__ == "__main__":
    sys.exit(main())
