"""Damaged checkpoints and reused save folders: content hashes checked on load (one rank and two),
autoresume falling back past a damaged newest checkpoint (local and S3), format-1 checkpoints
loading unverified, and a new run refused in a folder that holds another run's checkpoints."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re

import pytest
import torch
import xxhash
from torch.distributed.checkpoint import FileSystemReader

from composer_lite import Trainer
from composer_lite.checkpoint import (
    CheckpointError,
    CheckpointManager,
    CorruptCheckpointError,
    capture_rng,
)
from composer_lite.checkpoint.verify import HashingStream, hash_file
from composer_lite.testing import TinyLM, random_lm_batch
from streaming.storage import read_bytes, upload_bytes
from streaming.testing.distributed import run_distributed

pytestmark = pytest.mark.filterwarnings("ignore:the train dataloader has no state_dict")


def _model(seed: int = 0, dim: int = 16) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(vocab=32, dim=dim, n_layers=2)


def _trained(model: torch.nn.Module) -> torch.optim.Optimizer:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = random_lm_batch(4, 6, vocab=32, seed=1)
    model.loss(model(batch), batch).backward()
    optimizer.step()
    optimizer.zero_grad()
    return optimizer


def _flip(path: str, offset: int | None = None) -> None:
    """Change one byte of a file, keeping its size (what the issue did to a shard)."""
    with open(path, "r+b") as file:
        data = bytearray(file.read())
        offset = len(data) // 2 if offset is None else offset
        data[offset] ^= 0xFF
        file.seek(0)
        file.write(data)


def _inside(state_dir: str, fqn: str, file: str = "__0_0.distcp") -> tuple[str, int]:
    """(path, offset) of a byte in the middle of a saved tensor's chunk stored in `file`."""
    metadata = FileSystemReader(state_dir).read_metadata()
    stored = metadata.storage_data.items()
    info = next(v for k, v in stored if k.fqn == fqn and v.relative_path == file)
    return os.path.join(state_dir, info.relative_path), info.offset + info.length // 2


def _as_format_1(checkpoint: str) -> None:
    """Rewrite a manifest as composer-lite 0.2.1 wrote it (format version 1: no hashes)."""
    path = os.path.join(checkpoint, "manifest.json")
    with open(path) as file:
        manifest = json.load(file)
    del manifest["hashes"], manifest["hash_algorithm"]
    manifest["version"] = 1
    with open(path, "w") as file:
        json.dump(manifest, file)


# -- item 1: content hashes ----------------------------------------------------------------------


def test_a_changed_byte_in_a_shard_is_refused_and_format_1_loads_it_unverified(tmp_path, caplog):
    model = _model()
    optimizer = _trained(model)
    manager = CheckpointManager(tmp_path)
    path = manager.save("ba1", model=model, optimizer=optimizer, objects={})
    shard, offset = _inside(os.path.join(path, "state"), "model.emb.weight")
    size = os.path.getsize(shard)
    _flip(shard, offset)
    assert os.path.getsize(shard) == size and manager.inspect(path)  # sizes alone see nothing
    with pytest.raises(
        CorruptCheckpointError,
        match=r"checkpoint .*ba1 is corrupt.*state/__0_0\.distcp: expected xxh3_64 [0-9a-f]{16} "
        r"\(recorded at save\), got [0-9a-f]{16}",
    ):
        manager.load(path, model=_model(seed=1), optimizer=None)

    # The same damage in a checkpoint of format 1 (no hashes) loads, with a warning, and the
    # weight comes back changed: the silent corruption the hashes now catch.
    _as_format_1(path)
    fresh = _model(seed=1)
    with caplog.at_level(logging.WARNING, logger="composer_lite.checkpoint"):
        manager.load(path, model=fresh, optimizer=None)
    assert "format version 1" in caplog.text and "cannot be verified" in caplog.text
    assert not torch.equal(fresh.emb.weight, model.emb.weight)
    assert torch.equal(fresh.head.weight, model.head.weight)


@pytest.mark.parametrize("damaged", ["state/.metadata", "objects.pt", "rank_objects/rank0.pt"])
def test_a_changed_byte_in_the_other_files_is_refused(tmp_path, damaged):
    model = _model()
    optimizer = _trained(model)
    manager = CheckpointManager(tmp_path)
    path = manager.save(
        "ba1",
        model=model,
        optimizer=optimizer,
        objects={"w": torch.ones(3), "n": 1},
        rank_objects={"rng": capture_rng()},
    )
    _flip(os.path.join(path, *damaged.split("/")))
    fresh = _model(seed=1)
    with pytest.raises(CorruptCheckpointError, match=rf"ba1 is corrupt.*{damaged}: expected"):
        manager.load(path, model=fresh, optimizer=_trained(fresh))


def _fsdp_load_of_a_damaged_shard(rank, world, folder):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)  # forked from pytest: see test_checkpoint._forked_setup

    def sharded(seed):
        model = _model(seed)
        mesh = init_device_mesh("cpu", (world,))
        for block in model.blocks():
            fully_shard(block, mesh=mesh)
        return fully_shard(model, mesh=mesh)

    model = sharded(0)
    optimizer = _trained(model)
    manager = CheckpointManager(folder)
    path = manager.save("ba1", model=model, optimizer=optimizer, objects={})
    if rank == 0:  # a byte inside a tensor that rank 1 wrote and reads back
        _flip(*_inside(os.path.join(path, "state"), "model.head.weight", "__1_0.distcp"))
    torch.distributed.barrier()
    fresh = sharded(1)
    try:
        manager.load(path, model=fresh, optimizer=_trained(fresh))
    except CorruptCheckpointError as err:
        return str(err)
    return None


@pytest.mark.distributed
def test_a_damaged_shard_on_two_ranks_is_refused_on_both(tmp_path):
    errors = run_distributed(_fsdp_load_of_a_damaged_shard, world_size=2, args=(str(tmp_path),))
    for error in errors:  # found by the rank that checks the file; raised on both, none hangs
        assert error is not None and "ba1 is corrupt" in error
        assert "state/__1_0.distcp: expected xxh3_64" in error


# -- item 1: autoresume falls back -------------------------------------------------------------


def _run(folder, max_duration: str, *, model=None, **options) -> Trainer:
    torch.manual_seed(0)
    model = model or _model()
    data = [random_lm_batch(4, 6, vocab=32, seed=i) for i in range(8)]
    options.setdefault("save_interval", "2ba")
    trainer = Trainer(
        model,
        data,
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        max_duration=max_duration,
        save_folder=folder,
        loggers=[],
        default_callbacks=False,
        **options,
    )
    trainer.fit()
    return trainer


def _truncate(checkpoint: str) -> None:
    with open(os.path.join(checkpoint, "state", "__0_0.distcp"), "r+b") as file:
        file.truncate(100)


def _flip_shard(checkpoint: str) -> None:
    _flip(*_inside(os.path.join(checkpoint, "state"), "model.emb.weight"))


def _garble_manifest(checkpoint: str) -> None:
    with open(os.path.join(checkpoint, "manifest.json"), "r+b") as file:
        file.truncate(40)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_truncate, r"incomplete.*__0_0\.distcp \(100 bytes"),
        (_flip_shard, r"corrupt.*__0_0\.distcp: expected xxh3_64"),
        (_garble_manifest, r"manifest .* is not valid JSON"),
    ],
)
def test_autoresume_goes_back_past_a_damaged_newest_checkpoint(tmp_path, caplog, damage, reason):
    folder = str(tmp_path / "run")
    _run(folder, "4ba")
    damage(os.path.join(folder, "ep0-ba4"))
    with caplog.at_level(logging.WARNING, logger="composer_lite.checkpoint"):
        resumed = _run(folder, "6ba", autoresume=True)  # was: every restart crashed
    assert resumed.checkpointer.resumed_from == os.path.join(folder, "ep0-ba2")
    assert resumed.state.timestamp.batch == 6
    assert any("ep0-ba4" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    assert re.search(reason, caplog.text), caplog.text
    # the resumed run saved its own ep0-ba4 in place of the damaged one
    assert [os.path.basename(p) for p in CheckpointManager(folder).checkpoints()] == [
        "ep0-ba6",
        "ep0-ba4",
        "ep0-ba2",
    ]


def test_autoresume_stops_when_no_checkpoint_loads(tmp_path):
    folder = str(tmp_path / "run")
    _run(folder, "2ba")
    _truncate(os.path.join(folder, "ep0-ba2"))
    with pytest.raises(CheckpointError, match=r"none of the 1 checkpoints in .*run can be loaded"):
        _run(folder, "4ba", autoresume=True)


def test_autoresume_from_an_object_store_goes_back_past_a_changed_shard(s3_bucket, tmp_path):
    folder = f"{s3_bucket}/run"
    _run(folder, "4ba")
    url = f"{folder}/ep0-ba4/state/__0_0.distcp"
    data = bytearray(read_bytes(url))
    data[len(data) // 2] ^= 0xFF
    upload_bytes(bytes(data), url)
    resumed = _run(folder, "6ba", autoresume=True, save_interval="10ba")
    assert resumed.checkpointer.resumed_from == f"{folder}/ep0-ba2"


# -- item 2: a reused save_folder ----------------------------------------------------------------


def test_a_new_run_into_a_folder_with_another_runs_checkpoints_is_refused(tmp_path):
    folder = str(tmp_path / "run")
    _run(folder, "2ba")
    before = {p: os.path.getmtime(p) for p in CheckpointManager(folder).checkpoints()}
    with pytest.raises(
        CheckpointError,
        match=r"save_folder .*run already holds 1 checkpoint.*ep0-ba2.*autoresume=True.*"
        r"save_overwrite=True",
    ):  # another model width, no autoresume: was trained and saved over the first run
        _run(folder, "2ba", model=_model(dim=8))
    assert {p: os.path.getmtime(p) for p in CheckpointManager(folder).checkpoints()} == before

    # Said on purpose: it saves there; autoresume of the same model resumes; so does load_path
    # naming the newest checkpoint (resuming by hand).
    wide = _run(folder, "2ba", model=_model(dim=8), save_overwrite=True)
    assert (
        wide.checkpoints.latest() == os.path.join(folder, "ep0-ba2")
        and wide.checkpointer.resumed_from is None
    )
    with pytest.raises(CheckpointError, match=r"does not fit the model.*emb\.weight"):
        _run(folder, "4ba", autoresume=True)  # the folder now holds the other width
    assert _run(folder, "4ba", model=_model(dim=8), autoresume=True).checkpointer.resumed_from
    newest = CheckpointManager(folder).latest()
    assert (
        _run(folder, "6ba", model=_model(dim=8), load_path=newest).checkpointer.resumed_from
        == newest
    )


def test_a_folder_with_only_an_unfinished_save_is_not_another_run(tmp_path):
    folder = tmp_path / "run"
    (folder / ".ep0-ba2.tmp-0123abcd" / "state").mkdir(parents=True)
    (folder / "ep0-ba4").mkdir()  # files, no manifest: its save never finished
    assert _run(str(folder), "2ba").state.timestamp.batch == 2


def test_hashes_are_recorded_for_every_file(tmp_path):
    model = _model()
    path = CheckpointManager(tmp_path).save(
        "ba1", model=model, optimizer=_trained(model), objects={}, rank_objects={"r": 0}
    )
    manifest = CheckpointManager(tmp_path).inspect(path)
    assert manifest.version == 2 and manifest.hash_algorithm == "xxh3_64"
    assert set(manifest.hashes) == set(manifest.files) and len(manifest.files) == 4
    for rel, value in manifest.hashes.items():
        with open(os.path.join(path, *rel.split("/")), "rb") as file:
            assert xxhash.xxh3_64_hexdigest(file.read()) == value, rel


def test_a_hashing_stream_hashes_each_byte_once_however_it_is_read(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(pickle.dumps({"a": list(range(5000))}) + os.urandom(30000))
    with open(path, "rb") as raw:
        stream = HashingStream(raw)
        assert stream.read_range(20000, 100) == path.read_bytes()[20000:20100]  # skips ahead
        stream.seek(0)
        assert pickle.load(stream) == {"a": list(range(5000))}  # goes back, reads on
        stream.seek(-10, io.SEEK_END)
        assert stream.read() == path.read_bytes()[-10:]
        assert stream.finish() == hash_file(str(path))
