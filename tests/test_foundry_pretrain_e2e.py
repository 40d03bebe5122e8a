"""From raw text to a resumed two-node pretraining run, as a user runs it: `foundry tokenizer
train` and `foundry data prep`, then `foundry train` for hardware of 2 "nodes" x 1 process with
hybrid sharding (FSDP2's HSDP mesh: shard within a node, replicate across the nodes; gloo),
started the two ways foundry writes the launch for hardware that is not this machine:

- uninterrupted: its per-node torchrun script, run twice with HEAD=127.0.0.1: two separate
  `torchrun --nnodes=2` agents that meet at a c10d rendezvous;
- killed: `launch.launcher=slurm launch.submit=true` with fake `sbatch`, `srun` and `scontrol` on
  PATH (real executables: sbatch runs the batch script as a job, srun starts its command once per
  "node", SLURM_NODEID 0 and 1). After the first checkpoint one node's worker is SIGKILLed; both
  agents restart their workers (torchrun --max-restarts=1) in a new rendezvous round, and
  autoresume takes the run on from the newest checkpoint to the same final loss, bit for bit.
"""

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
from foundry.launch_scripts import TORCHRUN_SCRIPT
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
    "hardware.nodes=2",
    "hardware.gpus_per_node=1",
    "parallelism.sharding=hybrid",
    "log.console_every=1",
    "launch.max_restarts=1",
]
# Slurm, as far as the batch script sees it, on this one machine
FAKE_SLURM = {
    "sbatch": """#!/bin/bash
# fake sbatch: runs the batch script here and now, as a job of the nodes it asks for
script=${@: -1}
option() { sed -n "s/^#SBATCH --$1=//p" "$script"; }
export SLURM_JOB_ID=$$ SLURM_NNODES=$(option nodes) SLURM_JOB_NODELIST=127.0.0.1
echo "Submitted batch job $SLURM_JOB_ID"
output=$(option output)
cd "$(option chdir)" && exec bash "$script" > "${output//%j/$SLURM_JOB_ID}" 2>&1
""",
    "srun": """#!/bin/bash
# fake srun: its command once per node of the job, all here (SLURM_NODEID 0, 1, ...)
while [[ $1 == -* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_NNODES; node++)); do
    SLURM_NODEID=$node SLURM_PROCID=$node SLURM_LOCALID=0 "$@" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
""",
    "scontrol": """#!/bin/bash
# fake scontrol: `scontrol show hostnames LIST` names the fake job's one host
[[ $1 == show && $2 == hostnames ]] && echo "$3"
""",
}


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


def _train(root: Path, save: Path) -> list[str]:
    data = [f"data.sources.main.local={root / 'mds'}", f"tokenizer={root / 'tok'}"]
    return ["train", *MODEL, *data, f"save_folder={save}", f"launch.rdzv_port={free_port()}"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _final_loss(save: Path) -> float:
    """The loss of the last step, as the JSONL log recorded it (a resumed run appends)."""
    records = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    last = [
        r for r in records if r.get("step") == STEPS and "loss/train/total" in r.get("metrics", {})
    ]
    return last[-1]["metrics"]["loss/train/total"]


def _descendant_of_rank(root: int, rank: int) -> int | None:
    """The pid of the first process under `root` (breadth first) that is torch rank `rank`."""
    children: dict[int, list[int]] = {}
    ranked = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
        if f"RANK={rank}".encode() in environ:
            ranked.add(int(entry))
    level = [root]
    while level:
        found = [pid for pid in level if pid in ranked]
        if found:
            return found[0]
        level = [child for pid in level for child in children.get(pid, [])]
    return None


def _fake_slurm(folder: Path) -> str:
    folder.mkdir()
    for name, text in FAKE_SLURM.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def test_two_nodes_one_killed_resume_to_the_uninterrupted_final_loss(prepared, tmp_path, capsys):
    clean = tmp_path / "clean"
    assert foundry(_train(prepared, clean)) == 1  # 2 nodes are not this machine: written
    assert "nothing was trained here" in capsys.readouterr().err
    logs = [tmp_path / f"node{n}.log" for n in range(2)]
    nodes = [
        subprocess.Popen(
            ["bash", str(clean / TORCHRUN_SCRIPT)],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env=_env(HEAD="127.0.0.1"),
        )
        for log in logs
    ]
    for node, log in zip(nodes, logs, strict=True):
        assert node.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert "FSDP2 mesh ('replicate', 'shard') (2, 1)" in logs[0].read_text() + logs[1].read_text()

    killed = tmp_path / "killed"
    job = subprocess.Popen(
        [sys.executable, "-m", "foundry", *_train(prepared, killed)]
        + ["launch.launcher=slurm", "launch.submit=true"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(PATH=_fake_slurm(tmp_path / "bin")),
    )
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and job.poll() is None:
        if (killed / f"ep0-ba{SAVE_EVERY}" / "manifest.json").exists():  # mid-run, one saved
            victim = _descendant_of_rank(job.pid, 1)
            if victim is not None:
                os.kill(victim, signal.SIGKILL)  # one node's worker: its agent survives
        time.sleep(0.02)
    out, err = job.communicate(timeout=600)
    assert victim is not None, "the run ended before a worker could be killed mid-run"
    log = "".join(p.read_text() for p in killed.glob("slurm-*.out"))
    assert job.returncode == 0, (err + log)[-3000:]
    assert "Submitted batch job" in out
    assert "resumed from" in log, log[-3000:]  # torchrun restarted both nodes' workers
    assert log.count(f"trained to batch {STEPS}") == 1
    assert _final_loss(killed) == _final_loss(clean)  # bit for bit
