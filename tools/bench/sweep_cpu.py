"""A scaling-law sweep on the CPU in minutes: `foundry sweep` end to end on a real corpus.

    .venv/bin/python tools/bench/sweep_cpu.py                   # tinyshakespeare from ../shared
    .venv/bin/python tools/bench/sweep_cpu.py --corpus my.txt --threads 2

Trains a byte-level BPE on the first 90% of the corpus's paragraphs, prepares those as training
rows and the last 10% as held-out rows (`foundry data prep`), then runs `foundry sweep` over
3 widths x 2 token budgets with the next width up trained for real (`train_target=true`), and
prints the sweep's table, fit and prediction error. Without ../shared/data the corpus is the
synthetic bigram language of the foundry sweep test (more rows). Writes `sweep_cpu.json` (the
fit and the target) under --out (default $OUT or tools/bench/out/), beside the sweep's folder
(its points, sweep.jsonl, sweep.png). Rerunning reads the points back: delete --out to start over.

On tinyshakespeare (2-core CPU, one thread, 3 minutes for the 7 runs) the defaults gave
L = 4.00 +- 2.8 + 9.9e3 C^-(0.39 +- 1.3); d_model 96 at 230k tokens predicted 4.353 (95%:
2.17 .. 6.54), measured 4.247 (-2.5%).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[2]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "corpus" / "tinyshakespeare.txt"


def synthetic_paragraphs(n: int, seed: int = 0) -> list[str]:
    """The bigram language of packages/foundry/tests/test_sweep.py: 400 words, each one's
    successor Zipf-distributed over its own ordering of the words."""
    vocab, rng = 400, np.random.default_rng(seed)
    zipf = 1 / np.arange(1, vocab + 1) ** 1.1
    zipf /= zipf.sum()
    successors = np.stack([rng.permutation(vocab) for _ in range(vocab)])
    paragraphs = []
    for _ in range(n):
        word, words = int(rng.integers(vocab)), []
        for rank in rng.choice(vocab, 99, p=zipf):
            words.append(f"w{word}")
            word = int(successors[word, rank])
        paragraphs.append(" ".join(words))
    return paragraphs


def prepare_splits(corpus: Path | None, work: Path, *, vocab: int, seq: int) -> dict[str, Path]:
    """Tokenizer, training and held-out MDS folders under `work` (reused when present)."""
    from foundry.compose import compose_config
    from foundry.data.prep import prepare
    from foundry.schema import DataPrepCommand, TokenizerTrainCommand
    from foundry.tokenizer import train_from_config

    folders = {name: work / name for name in ("tok", "train", "val")}
    if all(
        (f / ("tokenizer.json" if n == "tok" else "index.json")).is_file()
        for n, f in folders.items()
    ):
        return folders
    if corpus is not None:
        paragraphs = [p.strip() for p in corpus.read_text().split("\n\n") if p.strip()]
    else:
        paragraphs = synthetic_paragraphs(1500)
    cut = int(0.9 * len(paragraphs))
    work.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", paragraphs[:cut]), ("val", paragraphs[cut:])):
        (work / f"{name}.txt").write_text("\n\n".join(part) + "\n")
    tok = [f"inputs=[{work / 'train.txt'}]", f"out={folders['tok']}", f"vocab_size={vocab}"]
    train_from_config(
        compose_config("tokenizer_train", [*tok, "text_unit=paragraph", "overwrite=true"]).build(
            TokenizerTrainCommand
        )
    )
    for name in ("train", "val"):
        overrides = [f"inputs=[{work / f'{name}.txt'}]", f"out={folders[name]}"]
        overrides += [f"tokenizer={folders['tok']}", f"max_seq_len={seq}", "text_unit=paragraph"]
        overrides += ["progress=false", "num_proc=1", "overwrite=true"]
        prepare(compose_config("data_prep", overrides).build(DataPrepCommand))
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", type=Path, default=SHAKESPEARE if SHAKESPEARE.is_file() else None
    )
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "tools/bench/out"))
    )
    parser.add_argument(
        "--vocab", type=int, default=1024, help="BPE tokens (model vocab: padded to 64)"
    )
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--widths", default="32,48,64", help="d_model of the sizes (2 layers, 4 heads)"
    )
    parser.add_argument("--target", type=int, default=96, help="d_model of the predicted size")
    parser.add_argument("--steps", default="150,300", help="the budgets, in optimizer steps")
    parser.add_argument("--target-steps", type=int, default=450)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny shapes: 1)")
    args = parser.parse_args(argv)

    import torch

    from foundry.cli import main as foundry

    torch.set_num_threads(args.threads)
    work = args.out / "sweep_cpu"
    start = time.perf_counter()
    folders = prepare_splits(args.corpus, work / "data", vocab=args.vocab, seq=args.seq)
    prepared = time.perf_counter() - start
    step = args.batch * args.seq
    sizes = ",".join(f"{{d_model:{w},n_layers:2}}" for w in args.widths.split(","))
    tokens = ",".join(str(int(s) * step) for s in args.steps.split(","))
    overrides = [
        f"data.local={folders['train']}",
        f"eval_data.local={folders['val']}",
        f"tokenizer={folders['tok']}",
        f"out={work / 'sweep'}",
        f"model.vocab_size={(args.vocab + 63) // 64 * 64}",
        f"model.max_seq_len={args.seq}",
        f"max_seq_len={args.seq}",
        f"global_train_batch_size={args.batch}",
        f"optimizer.lr={args.lr}",
        f"sizes=[{sizes}]",
        f"tokens=[{tokens}]",
        f"target.d_model={args.target}",
        "target.n_layers=2",
        f"target_tokens={args.target_steps * step}",
        "train_target=true",
        "console_every=1000",
    ]
    print("foundry sweep " + " ".join(repr(o) if "{" in o else o for o in overrides), flush=True)
    status = foundry(["sweep", *overrides])
    if status:
        return status
    fit = json.loads((work / "sweep" / "fit.json").read_text())
    target = fit["target"]
    error = target["measured_loss"] - target["predicted_loss"]
    report = {
        "corpus": str(args.corpus) if args.corpus else "synthetic bigram language",
        "command": overrides,
        "threads": args.threads,
        "prepare_seconds": round(prepared, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "fit": {k: fit[k] for k in ("E", "E_err", "A", "A_err", "alpha", "alpha_err")},
        "target": target,
        "relative_error": error / target["measured_loss"],
    }
    (args.out / "sweep_cpu.json").write_text(json.dumps(report, indent=2))
    print(
        f"\n{report['total_seconds']:.0f} s in all ({prepared:.0f} s preparing); prediction"
        f" {target['predicted_loss']:.4f}, measured {target['measured_loss']:.4f}"
        f" ({100 * report['relative_error']:+.1f}%); {args.out / 'sweep_cpu.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
