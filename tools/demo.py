"""`make demo`: raw text to a pretrained, generating MPT on this CPU, with foundry's own steps.

No network and no ../shared are needed: the corpus is the Python standard library's own source.

1. corpus     the standard library's top-level modules; every 10th file held out for evaluation
2. tokenizer  `foundry tokenizer train`: a 4,096-token byte-level BPE
3. data prep  `foundry data prep`: filtered, deduplicated, tokenized MDS shards (train and held out)
4. train      `foundry train model=mpt_tiny`: until the held-out loss is at most 0.7x its value at
              step 0 (the demo fails otherwise), checkpoints and metrics saved
5. generate   the model loaded back from its checkpoint completes a prompt

Everything goes under --out (default: demo-out/ in the repository, replaced on each run).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.7  # the held-out loss must fall to this fraction of its value at step 0
VOCAB = 4096


def corpus_files() -> tuple[list[str], list[str]]:
    """(train, held out): the standard library's top-level .py files, every 10th held out."""
    files = sorted(str(p) for p in Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    return [f for i, f in enumerate(files) if i % 10], files[::10]


def step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def done(start: float, what: str) -> None:
    print(f"-> {what} ({time.perf_counter() - start:.0f} s)", flush=True)


def build(config: str, schema: type, overrides: list[str]):
    from foundry.compose import compose_config

    composed = compose_config(config, overrides)
    return composed.build(schema), composed.to_yaml()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "demo-out"), help="where everything goes")
    parser.add_argument("--steps", type=int, default=160, help="training batches (of 16 x 256)")
    args = parser.parse_args()

    import torch

    from foundry import schema
    from foundry.checkpoints import load_trained
    from foundry.data.prep import prepare
    from foundry.tokenizer import load_tokenizer, train_from_config
    from foundry.train import Placement, build_run, save_config

    out = Path(args.out)
    if out.exists():
        print(f"replacing the previous demo output in {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    total = time.perf_counter()

    start = step("1. corpus")
    train_files, held_out = corpus_files()
    size = sum(Path(f).stat().st_size for f in train_files) / 1e6
    done(
        start,
        f"{len(train_files)} standard-library modules ({size:.1f} MB), {len(held_out)} held out",
    )

    start = step("2. tokenizer: foundry tokenizer train")
    tok_cfg, tok_text = build(
        "tokenizer_train",
        schema.TokenizerTrainCommand,
        [f"inputs=[{','.join(train_files)}]", f"out={out / 'tokenizer'}", f"vocab_size={VOCAB}"],
    )
    tokenizer = train_from_config(tok_cfg, config_text=tok_text)
    done(start, f"{VOCAB} tokens -> {out / 'tokenizer'}")

    start = step("3. data prep: foundry data prep")
    for name, files in (("train", train_files), ("val", held_out)):
        prep_cfg, prep_text = build(
            "data_prep",
            schema.DataPrepCommand,
            [
                f"inputs=[{','.join(files)}]",
                f"out={out / 'mds' / name}",
                f"tokenizer={out / 'tokenizer'}",
                "max_seq_len=256",
                "progress=false",
            ],
        )
        report = prepare(prep_cfg, config_text=prep_text)
        print(f"   {name}: {report['output']['samples']:,} samples of 256 tokens", flush=True)
    done(start, f"MDS shards -> {out / 'mds'}")

    start = step("4. train: foundry train model=mpt_tiny (CPU)")
    train_cfg, train_text = build(
        "train",
        schema.TrainCommand,
        [
            "model=mpt_tiny",
            f"model.vocab_size={VOCAB}",
            f"data.sources.main.local={out / 'mds' / 'train'}",
            f"eval_data.local={out / 'mds' / 'val'}",
            f"max_duration={args.steps}ba",
            "global_train_batch_size=16",
            "optimizer.lr=3e-3",
            "scheduler.warmup=20ba",
            f"eval_interval={args.steps // 4}ba",
            "eval_subset_num_batches=16",
            f"save_folder={out / 'run'}",
            f"save_interval={args.steps // 2}ba",
            f"tokenizer={out / 'tokenizer'}",
            "log.console_every=100000",  # the progress bar and the evaluations say enough
        ],
    )
    place = Placement(rank=0, world=1, device=torch.device("cpu"))
    run = build_run(train_cfg, place)
    save_config(train_cfg, train_text, place)
    initial = run.trainer.evaluate()["eval/loss"]
    print(f"   held-out loss at step 0: {initial:.3f}", flush=True)
    run.trainer.fit()
    final = run.trainer.state.eval_metrics["eval/loss"]
    ratio = final / initial
    done(start, f"held-out loss {initial:.3f} -> {final:.3f} ({ratio:.2f}x; target <= {TARGET}x)")

    start = step("5. generate: the model loaded back from its checkpoint")
    model, _ = load_trained(str(out / "run"))
    tokenizer = load_tokenizer(out / "tokenizer")
    torch.manual_seed(0)
    for prompt in ("def __init__(self", "for name in "):
        ids = model.generate(
            [tokenizer.encode(prompt)], max_new_tokens=48, temperature=0.7, top_k=40
        )
        print(f"   {tokenizer.decode(ids[0].tolist())!r}")
    done(start, "sampled completions (temperature 0.7, top-k 40)")

    print(f"\ndemo finished in {time.perf_counter() - total:.0f} s; everything is under {out}:")
    for what, path in (
        ("tokenizer", out / "tokenizer"),
        ("MDS data", out / "mds"),
        ("checkpoints", out / "run"),
        ("metrics", out / "run" / "metrics.jsonl"),
    ):
        print(f"  {what:<12}{path}")
    if ratio > TARGET:
        print(f"FAILED: the held-out loss fell only to {ratio:.2f}x of step 0's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
