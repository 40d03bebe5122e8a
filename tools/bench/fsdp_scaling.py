"""FSDP2 scaling of the Trainer on GPUs: tokens/s per GPU of a ~350M-parameter GPT on N GPUs
against 1 GPU, in one launch each (run under torchrun; `--nproc-per-node` is N).

    torchrun --nproc-per-node=1 tools/bench/fsdp_scaling.py --out $OUT/n1.json
    torchrun --nproc-per-node=2 tools/bench/fsdp_scaling.py --out $OUT/n2.json
    torchrun --nproc-per-node=1 tools/bench/fsdp_scaling.py --fsdp-on-one --out $OUT/n1f.json
    ... --compile   # each block under torch.compile (RESULTS.md, session 24, call 4)
    python tools/bench/fsdp_scaling.py --report $OUT/n1.json $OUT/n2.json

The model (d_model 1024, 24 layers, 16 heads, vocab 50,432, sequence 2,048, causal SDPA attention,
tied embeddings: 355M parameters) trains on random tokens with AdamW under bf16 autocast; on
several GPUs its blocks are sharded with FSDP2 (`ParallelConfig`). Per-GPU tokens/s is the mean
over the timed steps (after warm-up) of the global tokens per step / N / step time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.up, self.down = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        b, t, d = x.shape
        q, k, v = (
            self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        )  # (B, T, H, Dh)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(
        self, vocab: int = 50432, d: int = 1024, layers: int = 24, heads: int = 16, seq: int = 2048
    ) -> None:
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.layers = nn.ModuleList([Block(d, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.d, self.n_layers = d, layers
        for module in self.modules():  # GPT-2's init: N(0, 0.02), so logits start small
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, batch: dict) -> torch.Tensor:
        ids = batch["input_ids"]  # (B, T)
        x = self.emb(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for layer in self.layers:
            x = layer(x)
        return self.ln(x) @ self.emb.weight.t()  # (B, T, V), tied

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(
            logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100
        )

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def flops_per_token(self, seq_len: int) -> float:
        n = sum(p.numel() for p in self.parameters())
        return 6 * n + 12 * self.n_layers * self.d * seq_len


class RandomTokens:
    """Random LM batches in pinned host memory, as a DataLoader hands them over (the benchmark is
    about the trainer, not data); the Trainer copies them to the GPU."""

    def __init__(self, batch: int, seq: int, vocab: int, steps: int) -> None:
        self.batch_size, self.seq, self.vocab, self.steps = batch, seq, vocab, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        gen = torch.Generator().manual_seed(int(os.environ.get("RANK", "0")))
        pin = torch.cuda.is_available()
        for _ in range(self.steps):
            ids = torch.randint(0, self.vocab, (self.batch_size, self.seq), generator=gen)
            labels = torch.roll(ids, -1, 1)
            yield {
                "input_ids": ids.pin_memory() if pin else ids,
                "labels": labels.pin_memory() if pin else labels,
            }


def shard_on_one(model: nn.Module, device: torch.device, args: argparse.Namespace) -> None:
    """FSDP2 over a mesh of one GPU, as ParallelConfig shards over several: each block, then the
    root (the last block kept gathered after forward); no traffic, only FSDP2's own work."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh("cuda", (1,))
    dtype = torch.bfloat16 if args.param_dtype == "bf16" else None
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    model.to(device)
    blocks = list(model.blocks())
    for i, block in enumerate(blocks):
        keep = i == len(blocks) - 1 or args.no_reshard
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=not keep)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=not args.no_reshard)


def run(args: argparse.Namespace) -> dict:
    from composer_lite import Callback, ParallelConfig, Trainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    model = GPT(seq=args.seq)
    stamps: list[float] = []

    class Clock(Callback):  # no synchronize: the host runs at most a step ahead of the GPU
        def batch_end(self, state, logger):
            stamps.append(time.perf_counter())

    parallelism = (
        ParallelConfig(
            param_dtype=args.param_dtype,
            reshard_after_forward=not args.no_reshard,
            compile=args.compile,
        )
        if world > 1
        else None
    )
    if world == 1 and args.compile:  # each block, as ParallelConfig(compile=True) does
        for block in model.blocks():
            block.compile()
    if world == 1 and args.fsdp_on_one:  # composer-lite shards only over several ranks
        shard_on_one(model, device, args)
    data = RandomTokens(args.batch, args.seq, 50432, args.steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    trainer = Trainer(
        model,
        data,
        optimizer,
        max_duration=f"{args.steps}ba",
        precision=args.precision,
        parallelism=parallelism,
        callbacks=[Clock()],
        loggers=[],
        device="cuda",
        handle_signals=False,
    )
    trainer.fit()
    times = [b - a for a, b in zip(stamps[args.warmup :], stamps[args.warmup + 1 :], strict=False)]
    step = sum(times) / len(times)
    tokens_per_gpu = args.batch * args.seq / step
    n_params = sum(p.numel() for p in GPT(seq=args.seq).parameters())
    flops = GPT(seq=args.seq).flops_per_token(args.seq)
    return {
        "gpus": world,
        "device": torch.cuda.get_device_name(device),
        "params": n_params,
        "per_gpu_batch": args.batch,
        "seq": args.seq,
        "precision": args.precision,
        "param_dtype": args.param_dtype,
        "fsdp": world > 1 or args.fsdp_on_one,
        "compile": args.compile,
        "reshard_after_forward": not args.no_reshard,
        "step_s": step,
        "tokens_per_s_per_gpu": tokens_per_gpu,
        "mfu": tokens_per_gpu * flops / 989.5e12,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "timed_steps": len(times),
    }


def _order(r: dict) -> tuple:
    fsdp = r.get("fsdp", r["gpus"] > 1)
    reshard = r.get("reshard_after_forward", True)
    return r["gpus"], r.get("compile", False), fsdp, str(r["param_dtype"]), reshard


def report(paths: list[str]) -> None:
    rows = [json.load(open(p)) for p in paths]
    base = next(r for r in rows if r["gpus"] == 1 and not r.get("fsdp", False))
    head = f"{'gpus':>4s} {'compile':>7s} {'fsdp':>5s} {'reshard':>7s} {'param dtype':>11s} {'step s':>8s} {'tokens/s/GPU':>13s}"
    print(head + f" {'MFU':>6s} {'peak GiB':>9s} {'scaling':>8s}")
    for r in sorted(rows, key=_order):
        eff = r["tokens_per_s_per_gpu"] / base["tokens_per_s_per_gpu"]
        reshard, dtype = str(r.get("reshard_after_forward", True)), str(r["param_dtype"])
        fsdp = str(r.get("fsdp", r["gpus"] > 1))
        comp = str(r.get("compile", False))
        line = f"{r['gpus']:4d} {comp:>7s} {fsdp:>5s} {reshard:>7s} {dtype:>11s} {r['step_s']:8.3f}"
        line += f" {r['tokens_per_s_per_gpu']:13,.0f} {100 * r['mfu']:5.1f}%"
        print(line + f" {r['peak_memory_gib']:9.1f} {100 * eff:7.1f}%")
    shape = f"seq {base['seq']}, per-GPU batch {base['per_gpu_batch']}"
    print(f"device: {base['device']}; {base['params'] / 1e6:.0f}M parameters, {shape}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8, help="per-GPU batch (rows of --seq tokens)")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--precision", default="amp_bf16")
    parser.add_argument(
        "--param-dtype",
        default=None,
        help="FSDP2 param dtype on several GPUs (bf16: all-gather in bf16)",
    )
    parser.add_argument(
        "--no-reshard",
        action="store_true",
        help="keep gathered params from forward to backward (fewer all-gathers, more memory)",
    )
    parser.add_argument(
        "--fsdp-on-one",
        action="store_true",
        help="shard with FSDP2 on one GPU too (a mesh of one: FSDP2's own costs, no traffic)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile each block")
    parser.add_argument("--out", help="write this run's JSON here (rank 0)")
    parser.add_argument("--report", nargs="+", help="print the table from earlier runs' JSON files")
    args = parser.parse_args()
    if args.report:
        report(args.report)
        return 0
    result = run(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
