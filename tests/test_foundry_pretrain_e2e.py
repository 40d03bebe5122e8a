"""From raw text to a resumed pretraining run, as a user runs it: `foundry tokenizer train` and
`foundry data prep`, then `foundry train` on 2 processes with FSDP2 (gloo) under torchrun; one
rank is SIGKILLed mid-run, torchrun restarts the job, and autoresume takes it on from the last
checkpoint to the same final loss, bit for bit, as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foundry.cli import main as foundry
from streaming.testing.distributed import free_port

pytestmark = pytest.mark.distributed

STEPS, SAVE_EVERY = 24, 6
MODEL = [
    "model=mpt_tiny",
    "model.d_model=64",
    "model.n_layers=2",
    "model.vocab_size=512",
    "model.max_seq_len=64",
    "global_train_batch_size=8",
    "scheduler.warmup=4ba",
    f"max_duration={STEPS}ba",
    f"save_interval={SAVE_EVERY}ba",
    "hardware=cpu",
    "hardware.gpus_per_node=2",
    "log.console_every=1",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A tokenizer and MDS data made from a generated corpus with foundry's own commands."""
    root = tmp_path_factory.mktemp("e2e")
    rng = random.Random(0)
    words = [f"{a}{b}" for a in "bcdfgklmnprst" for b in ("a", "e", "i", "o", "u", "an", "er")]
    corpus = root / "corpus.jsonl"
    with corpus.open("w") as f:
        for _ in range(400):
            doc = " ".join(rng.choice(words) for _ in range(rng.randint(40, 120)))
            f.write(json.dumps({"text": doc}) + "\n")
    tokenizer = ["tokenizer", "train", f"inputs=[{corpus}]", f"out={root / 'tok'}"]
    assert foundry([*tokenizer, "vocab_size=512"]) == 0
    prep = ["data", "prep", f"inputs=[{corpus}]", f"out={root / 'mds'}", "max_seq_len=64"]
    assert foundry([*prep, f"tokenizer={root / 'tok'}", "num_proc=1", "progress=false"]) == 0
    return root


def _torchrun(root: Path, save: Path, restarts: int) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"]
    launcher += [f"--max-restarts={restarts}", "--rdzv-backend=c10d"]
    launcher += [f"--rdzv-endpoint=127.0.0.1:{free_port()}"]
    data = [f"data.sources.main.local={root / 'mds'}", f"tokenizer={root / 'tok'}"]
    return [*launcher, "-m", "foundry", "train", *MODEL, *data, f"save_folder={save}"]


def _env() -> dict[str, str]:
    # restarted workers must not share the dead attempt's rendezvous store (pytorch#135712)
    return {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def _final_loss(save: Path) -> float:
    """The loss of the last step, as the JSONL log recorded it (a resumed run appends)."""
    records = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    last = [
        r for r in records if r.get("step") == STEPS and "loss/train/total" in r.get("metrics", {})
    ]
    return last[-1]["metrics"]["loss/train/total"]


def _worker_of_rank(agent: int, rank: int) -> int | None:
    """The pid of torchrun's worker process of `rank` (a child of the agent), if it runs."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == agent and f"RANK={rank}".encode() in environ:
            return int(entry)
    return None


def test_sigkill_of_one_rank_resumes_to_the_uninterrupted_final_loss(prepared, tmp_path):
    clean = subprocess.run(
        _torchrun(prepared, tmp_path / "clean", restarts=0),
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert clean.returncode == 0, clean.stderr[-3000:]

    killed = tmp_path / "killed"
    agent = subprocess.Popen(
        _torchrun(prepared, killed, restarts=1),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and agent.poll() is None:
        if (killed / f"ep0-ba{SAVE_EVERY}" / "manifest.json").exists():  # mid-run, one saved
            victim = _worker_of_rank(agent.pid, 1)
            if victim is not None:
                os.kill(victim, signal.SIGKILL)
        time.sleep(0.02)
    out, err = agent.communicate(timeout=600)
    assert victim is not None, "the run ended before a rank could be killed mid-run"
    assert agent.returncode == 0, err[-3000:]
    assert "resumed from" in err, err[-3000:]  # torchrun restarted it and autoresume took over
    assert out.count(f"trained to batch {STEPS}") == 1
    assert _final_loss(killed) == _final_loss(tmp_path / "clean")  # bit for bit
