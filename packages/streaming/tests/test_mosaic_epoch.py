"""The epoch against mosaicml-streaming 0.13 itself: how many samples each rank and dataloader
worker reads and in which batch sizes (its padding rule), `len()`, and its warnings.

The sample order differs on purpose (our shuffles are our own); what a user counts on is the
same: one subprocess for the whole module runs mosaicml's partition for a grid of nodes x ranks x
workers x batch sizes x epoch sizes x canonical nodes (x resumption points), and its
StreamingDataset and torch DataLoader on one device, and we compare with ours.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from streaming import MDSWriter, StreamingDataLoader, StreamingDataset
from streaming.options import usage_warnings
from streaming.partition import padded_end, rank_worker_positions


def _grid() -> list[tuple[int, int, int, int, int, int, int]]:
    """(epoch size, canonical nodes, physical nodes, ranks per node, workers, batch, start)."""
    out = []
    for epoch, canonical, nodes, ranks, workers, batch in itertools.product(
        [1, 3, 30, 101], [1, 2, 4, 8], [1, 2, 4], [1, 2, 3], [1, 2, 3], [1, 4, 7]
    ):
        if canonical % nodes and nodes % canonical:
            continue  # mosaicml refuses these (we read them: see the README)
        out.append((epoch, canonical, nodes, ranks, workers, batch, 0))
        global_batch = nodes * ranks * batch
        if epoch > global_batch:  # resumed after a whole global batch, as a checkpoint is taken
            out.append((epoch, canonical, nodes, ranks, workers, batch, global_batch))
    return out


GRID = _grid()

# (name, per-device batch, canonical nodes, epoch_size, dataloader workers, drop_last)
LOADERS = [
    ("plain", 4, 1, None, 0, False),
    ("drop-last", 4, 1, None, 2, True),
    ("canonical", 4, 4, None, 2, False),
    ("epoch-size", 7, 3, 50, 2, False),
    ("epoch-size-drop", 7, 3, 50, 0, True),
    ("tiny-epoch", 2, 8, 5, 0, False),
]

_MOSAIC = r"""
import os, shutil, tempfile, warnings
import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader
from streaming import StreamingDataset
from streaming.base.partition import get_partitions

def batch_sizes(rows):
    # what torch's DataLoader makes of one worker's samples: -1 is skipped, so a partial batch
    return [int((row != -1).sum()) for row in rows if (row != -1).any()]

result = {"grid": [], "loaders": {}, "len": {}, "warnings": {}}
for epoch, canonical, nodes, ranks, workers, batch, start in args["grid"]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ids = get_partitions("relaxed", epoch, canonical, nodes, ranks, workers, batch, start)
        except ValueError as err:  # mosaicml's own failure on a few tiny epochs
            result["grid"].append({"error": repr(err)})
            continue
    result["grid"].append({
        "sizes": [[[batch_sizes(ids[n, r, w]) for w in range(workers)] for r in range(ranks)]
                  for n in range(nodes)],
        "distinct": len(set(ids[ids >= 0].tolist())),
        "warned": sorted({w.category.__name__ for w in caught
                          if "canonical nodes" in str(w.message)}),
    })

def fresh_local():
    return tempfile.mkdtemp(prefix="mosaic-epoch-")

for name, batch, canonical, epoch_size, workers, drop_last in args["loaders"]:
    ds = StreamingDataset(remote=args["path"], local=fresh_local(), batch_size=batch,
                          num_canonical_nodes=canonical, epoch_size=epoch_size)
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, drop_last=drop_last)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = [[int(i) for i in b["id"]] for b in loader]
    result["loaders"][name] = {
        "len_ds": len(ds), "len_loader": len(loader), "ids": ids,
        "warned": sorted({str(w.category.__name__) for w in caught
                          if "canonical" in str(w.message)}),
    }
    del loader, ds

# len() on more ranks: construction only (mosaicml reads the world from the environment; a
# process group of one stands in for the others' barriers).
dist.init_process_group("gloo", init_method="file://" + os.path.join(fresh_local(), "pg"),
                        rank=0, world_size=1)
for num_ranks, per_node, epoch_size, replication in args["lens"]:
    os.environ.update(RANK="0", WORLD_SIZE=str(num_ranks), LOCAL_WORLD_SIZE=str(per_node),
                      LOCAL_RANK="0")
    ds = StreamingDataset(remote=args["path"], local=fresh_local(), batch_size=2,
                          epoch_size=epoch_size, replication=replication)
    result["len"][f"{num_ranks}/{per_node}/{epoch_size}/{replication}"] = len(ds)
    del ds
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")

# warnings mosaicml gives at construction or in the first pass
for name, options in args["warn"].items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = StreamingDataset(remote=args["path"], local=fresh_local(), **options)
        next(iter(ds))
    result["warnings"][name] = sorted({w.category.__name__ for w in caught})
    del ds
"""

# (ranks, ranks per node, epoch_size, replication)
LENS = [(4, 4, None, None), (4, 2, 50, None), (3, 3, 31, None), (8, 4, 7, None), (4, 2, 31, 2)]
WARN = {
    "predownload": {"batch_size": 8, "predownload": 4},
    "small-block": {"batch_size": 2, "shuffle": True, "shuffle_block_size": 2},
    "quiet": {"batch_size": 2, "predownload": 2, "shuffle": True, "shuffle_block_size": 64},
}


def write_ids(out: Path, count: int) -> Path:
    with MDSWriter(out=str(out), columns={"id": "int"}, size_limit=120) as writer:
        for i in range(count):
            writer.write({"id": i})
    return out


@pytest.fixture(scope="module")
def theirs(mosaic, tmp_path_factory):
    path = write_ids(tmp_path_factory.mktemp("epoch") / "ds", 30)
    args = {"grid": GRID, "loaders": LOADERS, "path": str(path), "lens": LENS, "warn": WARN}
    return {"path": path, **mosaic.call(_MOSAIC, args)}


def _our_sizes(epoch, canonical, nodes, ranks, workers, batch, start):
    num_ranks = nodes * ranks
    end = padded_end(epoch, canonical, num_ranks, start)
    out = []
    for node in range(nodes):
        per_rank = []
        for local in range(ranks):
            per_worker = []
            for worker in range(workers):
                positions = rank_worker_positions(
                    start=start,
                    end=end,
                    global_batch=batch * num_ranks,
                    rank=node * ranks + local,
                    num_ranks=num_ranks,
                    worker=worker,
                    num_workers=workers,
                )
                per_worker.append(
                    [len(positions[i : i + batch]) for i in range(0, len(positions), batch)]
                )
            per_rank.append(per_worker)
        out.append(per_rank)
    return out, end


def test_every_rank_and_worker_reads_what_mosaic_reads(theirs):
    """For each split, each worker of each rank yields batches of the same sizes as mosaicml's:
    the same amount of padding (to even out canonical nodes and ranks, none to fill batches),
    the same partial last batch; and an epoch covers every sample."""
    assert len(GRID) > 500
    failed = 0
    for config, got in zip(GRID, theirs["grid"], strict=True):
        epoch, canonical, nodes, ranks, workers, batch, start = config
        if "error" in got:  # mosaicml fails on tiny epochs over fewer canonical than physical
            assert epoch < nodes and canonical < nodes, (config, got)  # nodes; we read them
            failed += 1
            continue
        ours, end = _our_sizes(*config)
        assert ours == got["sizes"], config
        if start == 0:
            assert got["distinct"] == min(epoch, end) == epoch, config
    assert failed < len(GRID) // 20


def test_the_warning_for_more_canonical_nodes_than_samples_is_mosaics(theirs):
    """mosaicml warns (UserWarning) when an epoch has fewer samples than canonical nodes; we
    warn in the same cases (at construction, see usage_warnings)."""
    for config, got in zip(GRID, theirs["grid"], strict=True):
        epoch, canonical, nodes = config[:3]
        if "error" in got:
            continue
        messages = usage_warnings(
            batch_size=1,
            predownload=None,
            epoch_size=epoch,
            num_canonical_nodes=canonical,
            num_nodes=nodes,
            shuffle=False,
            shuffle_algo="py1e",
            shuffle_block_size=1,
            max_shard_samples=1,
        )
        assert (["UserWarning"] if messages else []) == got["warned"], config


@pytest.mark.parametrize("case", LOADERS, ids=[case[0] for case in LOADERS])
def test_one_device_dataloader_matches_mosaic(theirs, case):
    """The batches a torch DataLoader makes on one device: as many, of the same sizes, over the
    same samples (in our order), and the same len() of the dataset and the loader."""
    name, batch, canonical, epoch_size, workers, drop_last = case
    got = theirs["loaders"][name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = StreamingDataset(
            local=str(theirs["path"]),
            batch_size=batch,
            num_canonical_nodes=canonical,
            epoch_size=epoch_size,
        )
    warned = sorted({w.category.__name__ for w in caught if "canonical" in str(w.message)})
    assert warned == got["warned"]
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, drop_last=drop_last)
    ids = [[int(i) for i in b["id"]] for b in loader]
    assert (len(ds), len(loader)) == (got["len_ds"], got["len_loader"])
    assert [len(b) for b in ids] == [len(b) for b in got["ids"]]
    if epoch_size is None and not drop_last:  # the epoch is the dataset: every sample, once or
        everything = list(range(ds.num_samples))  # twice (padding), as mosaicml reads it
        assert sorted(set(sum(ids, []))) == sorted(set(sum(got["ids"], []))) == everything


def test_len_on_several_ranks_is_mosaics(theirs, monkeypatch):
    for num_ranks, per_node, epoch_size, replication in LENS:
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", str(num_ranks))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(per_node))
        ds = StreamingDataset(
            local=str(theirs["path"]),
            batch_size=2,
            epoch_size=epoch_size,
            replication=replication,
        )
        assert len(ds) == theirs["len"][f"{num_ranks}/{per_node}/{epoch_size}/{replication}"]


def test_replicas_read_the_same_samples(theirs, monkeypatch):
    """replication=2 on 4 ranks: ranks 0 and 1 read the same samples, 2 and 3 too, and the two
    groups together read the epoch as 2 ranks would (was: refused)."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    read = []
    for rank in range(4):
        monkeypatch.setenv("RANK", str(rank))
        ds = StreamingDataset(local=str(theirs["path"]), batch_size=3, replication=2)
        read.append([int(s["id"]) for s in ds])
    assert read[0] == read[1] and read[2] == read[3] and read[0] != read[2]
    assert sorted(read[0] + read[2]) == list(range(30))
    loader = StreamingDataLoader(ds, collate_fn=lambda rows: rows)
    batches = iter(loader)
    next(batches), next(batches)
    # 6 samples on each of 4 ranks, 2 groups of replicas: 12 samples of the epoch read
    assert loader.state_dict()["sample_in_epoch"] == 12
    with pytest.raises(ValueError, match="replication=3 does not divide the world size 4"):
        StreamingDataset(local=str(theirs["path"]), batch_size=3, replication=3)


@pytest.mark.parametrize("name", sorted(WARN))
def test_usage_warnings_are_mosaics(theirs, name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = StreamingDataset(local=str(theirs["path"]), **WARN[name])
        next(iter(ds))
    assert sorted({w.category.__name__ for w in caught}) == theirs["warnings"][name]
