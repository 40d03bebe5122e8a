"""Where a process sits: from the launcher's environment, torch.distributed, and worker info."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader

from streaming import MDSWriter, StreamingDataset, World
from streaming.testing.distributed import DistributedTestError, run_distributed


def test_defaults_to_a_single_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert World.detect() == World()


def test_reads_the_launcher_environment(monkeypatch):
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    world = World.detect()
    assert (world.rank, world.num_ranks, world.node, world.num_nodes, world.local_rank) == (
        5,
        8,
        1,
        2,
        1,
    )
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="world size 8 is not a multiple of the ranks per node 3"):
        World.detect()
    monkeypatch.setenv("RANK", "five")
    with pytest.raises(ValueError, match="RANK='five' is not an integer"):
        World.detect()


def _read_rank(rank, world_size, local, global_batch):
    import torch.distributed as dist

    world = World.detect()
    assert dist.is_initialized() and (world.rank, world.num_ranks) == (rank, world_size)
    ds = StreamingDataset(
        local=local, batch_size=global_batch // world_size, shuffle=True, shuffle_seed=3
    )
    return [b["id"].tolist() for b in DataLoader(ds, batch_size=ds.batch_size, num_workers=2)]


def test_gloo_ranks_with_workers_read_the_single_process_global_batches(tmp_path):
    with MDSWriter(out=str(tmp_path), columns={"id": "int"}, size_limit=64) as w:
        for i in range(50):
            w.write({"id": i})
    per_rank = run_distributed(_read_rank, world_size=2, args=(str(tmp_path), 8))
    global_batches = [per_rank[0][t] + per_rank[1][t] for t in range(len(per_rank[0]))]
    single = StreamingDataset(local=str(tmp_path), batch_size=8, shuffle=True, shuffle_seed=3)
    reference = [b["id"].tolist() for b in DataLoader(single, batch_size=8)]
    assert global_batches == reference
    flat = np.concatenate(reference)
    assert sorted(flat[:50].tolist()) == list(range(50))


def _fail(rank, world_size):
    if rank == 1:
        raise RuntimeError("boom on rank 1")
    import torch.distributed as dist

    dist.barrier()


def test_a_failing_rank_is_reported_not_hung():
    with pytest.raises(DistributedTestError, match="rank 1 failed:(.|\n)*boom on rank 1"):
        run_distributed(_fail, world_size=2, timeout=60)
