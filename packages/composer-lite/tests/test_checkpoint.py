"""CheckpointManager: round trips, FSDP2 resharding on gloo ranks, crashes mid-save, the `latest`
pointer, retention, object stores (moto on 127.0.0.1), and the errors for bad paths."""

from __future__ import annotations

import collections
import json
import multiprocessing as mp
import os
import random
import shutil

import numpy as np
import pytest
import torch
from torch.distributed.checkpoint.state_dict import get_state_dict

from composer_lite.checkpoint import (
    CheckpointError,
    CheckpointManager,
    CheckpointNotFoundError,
    IncompleteCheckpointError,
    Manifest,
    capture_rng,
    restore_rng,
)
from composer_lite.checkpoint.state import join_objects, split_objects
from composer_lite.testing import TinyLM, random_lm_batch
from streaming.storage import list_objects
from streaming.testing.distributed import run_distributed

# -- helpers ------------------------------------------------------------------------------------


def _model(seed: int = 0, dim: int = 16) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(vocab=32, dim=dim, n_layers=2)


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int = 1):
    for step in range(steps):
        batch = random_lm_batch(4, 6, vocab=32, seed=seed + step)
        model.loss(model(batch), batch).backward()
        optimizer.step()
        optimizer.zero_grad()


def _full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """(params, optimizer state) keyed by parameter name, as whole tensors (collective if sharded)."""
    from torch.distributed.tensor import DTensor

    def full(value):
        value = value.full_tensor() if isinstance(value, DTensor) else value
        return value.detach().clone() if isinstance(value, torch.Tensor) else value

    model_sd, optim_sd = get_state_dict(model, optimizer)
    params = {name: full(value) for name, value in model_sd.items()}
    states = {
        name: {key: full(value) for key, value in entry.items()}
        for name, entry in optim_sd["state"].items()
    }
    return params, states


def _assert_same(got, expected) -> None:
    (got_params, got_states), (params, states) = got, expected
    assert got_params.keys() == params.keys() and got_states.keys() == states.keys()
    for name in params:
        assert torch.equal(got_params[name], params[name]), name
    for name in states:
        for key in states[name]:
            assert torch.equal(got_states[name][key], states[name][key]), (name, key)


def _trained(steps: int = 3, seed: int = 0):
    model = _model(seed)
    optimizer = _optimizer(model)
    _train(model, optimizer, steps)
    return model, optimizer


# -- one rank -----------------------------------------------------------------------------------


def test_round_trip_restores_model_optimizer_objects_and_rng(tmp_path):
    model, optimizer = _trained()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    _train(model, optimizer, 1, seed=5)
    scheduler.step()
    objects = {
        "timestamp": {"epoch": 1, "batch": 3},
        "scheduler": scheduler.state_dict(),
        "callbacks": [{"shadow": {"w": torch.arange(6.0).reshape(2, 3)}}, {}],
        "pair": (torch.ones(2), "x"),
        "ordered": collections.OrderedDict(b=1, a=2),
    }
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    manager = CheckpointManager(tmp_path / "ck")
    path = manager.save(
        "ep0-ba3",
        model=model,
        optimizer=optimizer,
        objects=objects,
        rank_objects={"rng": capture_rng()},
    )
    draws = (random.random(), np.random.rand(), torch.rand(1))
    assert path == str(tmp_path / "ck" / "ep0-ba3") and manager.latest() == path

    fresh = _model(seed=7)
    fresh_optimizer = _optimizer(fresh)
    loaded, mine = manager.load(path, model=fresh, optimizer=fresh_optimizer)
    _assert_same(_full_state(fresh, fresh_optimizer), _full_state(model, optimizer))
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert (
        loaded["timestamp"] == objects["timestamp"] and loaded["scheduler"] == objects["scheduler"]
    )
    assert torch.equal(
        loaded["callbacks"][0]["shadow"]["w"], objects["callbacks"][0]["shadow"]["w"]
    )
    assert torch.equal(loaded["pair"][0], torch.ones(2)) and loaded["pair"][1] == "x"
    assert list(loaded["ordered"]) == ["b", "a"]
    restore_rng(mine["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == draws
    manifest = manager.inspect(path)
    assert manifest.world_size == 1 and manifest.rank_objects == [0]
    assert manifest.optimizer == "sharded"


def test_an_optimizer_that_has_not_stepped_is_saved_without_side_effects(tmp_path):
    model = _model()
    optimizer = _optimizer(model)
    manager = CheckpointManager(tmp_path)
    path = manager.save("ba0", model=model, optimizer=optimizer, objects={})
    assert not optimizer.state  # saving did not take a zero step to create Adam's state
    stepped, stepped_optimizer = _trained(seed=3)
    stepped_optimizer.param_groups[0]["lr"] = 5.0
    manager.load(path, model=stepped, optimizer=stepped_optimizer)
    assert not stepped_optimizer.state and stepped_optimizer.param_groups[0]["lr"] == 1e-2
    assert all(
        torch.equal(a, b) for a, b in zip(stepped.parameters(), model.parameters(), strict=True)
    )
    assert manager.inspect(path).optimizer == "empty"


def test_split_and_join_objects_round_trip():
    pair = collections.namedtuple("Pair", "a b")
    objects = {
        "a": [torch.zeros(2), pair(torch.ones(1), 3)],
        "b": collections.OrderedDict(c=torch.eye(2)),
    }
    skeleton, tensors = split_objects(objects)
    assert len(tensors) == 3 and "tensor(" not in repr(skeleton)
    back = join_objects(skeleton, tensors)
    assert torch.equal(back["b"]["c"], torch.eye(2)) and type(back["b"]) is collections.OrderedDict
    assert (
        type(back["a"][1]) is pair
        and back["a"][1].b == 3
        and torch.equal(back["a"][1].a, torch.ones(1))
    )


# -- FSDP2 on two gloo ranks: resharding 1 -> 2, 2 -> 2 and 2 -> 1 ------------------------------


def _sharded(seed: int) -> TinyLM:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = _model(seed)
    mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
    for block in model.blocks():
        fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _forked_setup() -> None:
    # Forked from pytest, whose OpenMP pool (used by earlier tests) does not survive fork: the
    # child's first parallel op would hang. One thread per process avoids OpenMP.
    torch.set_num_threads(1)


def _fsdp_body(rank, world, folder, start_path):
    _forked_setup()
    manager = CheckpointManager(folder)
    model = _sharded(seed=11)
    optimizer = _optimizer(model)
    _, start_mine = manager.load(start_path, model=model, optimizer=optimizer)  # saved on 1 rank
    start = _full_state(model, optimizer)
    _train(model, optimizer, 2, seed=20)
    shadow = {name: p.detach().clone() for name, p in model.named_parameters()}  # DTensors
    path = manager.save(
        "two",
        model=model,
        optimizer=optimizer,
        objects={"ema": shadow, "step": 5},
        rank_objects={"rank": rank},
    )
    saved = _full_state(model, optimizer)
    fresh = _sharded(seed=12)
    fresh_optimizer = _optimizer(fresh)
    objects, mine = manager.load(path, model=fresh, optimizer=fresh_optimizer)
    out = dict(
        start=start,
        start_mine=start_mine,
        path=path,
        saved=saved,
        objects=objects,
        reloaded=_full_state(fresh, fresh_optimizer),
        mine=mine,
    )
    return _map_tensors(out, lambda t: t.numpy())  # tensors do not cross the result queue


def _map_tensors(value, fn):
    if isinstance(value, torch.Tensor | np.ndarray):
        return fn(value)
    if isinstance(value, dict):
        return {key: _map_tensors(item, fn) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_map_tensors(item, fn) for item in value)
    return value


@pytest.mark.distributed
def test_fsdp2_checkpoints_reshard_between_one_and_two_ranks(tmp_path):
    folder = str(tmp_path / "ck")
    model, optimizer = _trained()
    start = CheckpointManager(folder).save(
        "one", model=model, optimizer=optimizer, objects={}, rank_objects={"rank": 0}
    )
    ranks = _map_tensors(
        run_distributed(_fsdp_body, world_size=2, args=(folder, start)), torch.from_numpy
    )
    for rank, out in enumerate(ranks):
        _assert_same(out["start"], _full_state(model, optimizer))  # 1 -> 2
        _assert_same(out["reloaded"], out["saved"])  # 2 -> 2
        assert out["mine"] == {"rank": rank} and out["objects"]["step"] == 5
    assert ranks[0]["start_mine"] == {"rank": 0} and ranks[1]["start_mine"] is None
    saved_params = ranks[0]["saved"][0]
    for name, value in ranks[0]["objects"]["ema"].items():  # DTensors come back whole
        assert not isinstance(value, torch.distributed.tensor.DTensor)
        assert torch.equal(value, saved_params[name]), name

    one = _model(seed=13)  # 2 -> 1
    one_optimizer = _optimizer(one)
    objects, mine = CheckpointManager(folder).load(
        ranks[0]["path"], model=one, optimizer=one_optimizer
    )
    _assert_same(_full_state(one, one_optimizer), ranks[0]["saved"])
    assert mine == {"rank": 0} and torch.equal(
        objects["ema"]["head.weight"], saved_params["head.weight"]
    )
    manifest = CheckpointManager(folder).inspect(ranks[0]["path"])
    assert manifest.world_size == 2 and {"state/__0_0.distcp", "state/__1_0.distcp"} <= set(
        manifest.files
    )


# -- crashes, the latest pointer, retention -----------------------------------------------------


def _save_then_die_before_the_manifest(folder: str) -> None:
    _forked_setup()
    model, optimizer = _trained(steps=1)
    manager = CheckpointManager(folder)
    manager.save("ba1", model=model, optimizer=optimizer, objects={"batch": 1})

    def die(self):  # the data of ba2 is written; the process dies before its manifest
        os._exit(17)

    Manifest.to_json = die
    manager.save("ba2", model=model, optimizer=optimizer, objects={"batch": 2})


def test_a_save_killed_before_its_manifest_is_never_loaded(tmp_path):
    folder = str(tmp_path / "ck")
    child = mp.get_context("fork").Process(
        target=_save_then_die_before_the_manifest, args=(folder,)
    )
    child.start()
    child.join(60)
    assert child.exitcode == 17
    manager = CheckpointManager(folder)
    leftover = [name for name in os.listdir(folder) if name.startswith(".ba2.tmp-")]
    assert len(leftover) == 1 and os.listdir(os.path.join(folder, leftover[0], "state"))
    assert manager.latest() == os.path.join(folder, "ba1")
    assert open(os.path.join(folder, "latest")).read().strip() == "ba1"
    model = _model()
    with pytest.raises(IncompleteCheckpointError, match=r"ba2\.tmp-.*incomplete.*manifest\.json"):
        manager.load(os.path.join(folder, leftover[0]), model=model, optimizer=None)

    # Files written, no manifest, under a normal name (newer than ba1): ignored and refused.
    shutil.copytree(os.path.join(folder, "ba1"), os.path.join(folder, "ba3"))
    os.remove(os.path.join(folder, "ba3", "manifest.json"))
    assert manager.latest() == os.path.join(folder, "ba1")
    with pytest.raises(IncompleteCheckpointError, match=r"ba3 is incomplete: it has no manifest"):
        manager.load(os.path.join(folder, "ba3"), model=model, optimizer=None)

    # A manifest whose files are not all there (truncated shard): refused before loading.
    shutil.copytree(os.path.join(folder, "ba1"), os.path.join(folder, "ba4"))
    with open(os.path.join(folder, "ba4", "state", "__0_0.distcp"), "r+b") as file:
        file.truncate(10)
    with pytest.raises(
        IncompleteCheckpointError, match=r"ba4 is incomplete.*__0_0\.distcp \(10 bytes"
    ):
        manager.load(os.path.join(folder, "ba4"), model=model, optimizer=None)

    # The next successful save removes what the crash left.
    model, optimizer = _trained(steps=1)
    manager.save("ba5", model=model, optimizer=optimizer, objects={})
    assert not [name for name in os.listdir(folder) if name.startswith(".")]


def test_latest_moves_only_after_the_manifest_is_written(tmp_path, monkeypatch):
    model, optimizer = _trained(steps=1)
    manager = CheckpointManager(tmp_path)
    first = manager.save("ba1", model=model, optimizer=optimizer, objects={})

    def fail(self):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(Manifest, "to_json", fail)
    with pytest.raises(OSError, match="disk full"):
        manager.save("ba2", model=model, optimizer=optimizer, objects={})
    assert (tmp_path / "latest").read_text().strip() == "ba1" and manager.latest() == first
    assert sorted(os.listdir(tmp_path)) == ["ba1", "latest"]  # the failed save cleaned up
    monkeypatch.undo()
    second = manager.save("ba2", model=model, optimizer=optimizer, objects={})
    assert (tmp_path / "latest").read_text().strip() == "ba2" and manager.latest() == second


def test_retention_keeps_the_newest_n_and_never_a_protected_one(tmp_path):
    model, optimizer = _trained(steps=1)
    manager = CheckpointManager(tmp_path, keep=2)
    resumed_from = manager.save("a", model=model, optimizer=optimizer, objects={})
    for name in ("b", "c", "d"):
        manager.save(name, model=model, optimizer=optimizer, objects={}, protect={resumed_from})
    assert manager.checkpoints() == [str(tmp_path / n) for n in ("d", "c", "a")]
    manager.save("e", model=model, optimizer=optimizer, objects={})  # nothing protected now
    assert manager.checkpoints() == [str(tmp_path / n) for n in ("e", "d")]
    manager.save("d", model=model, optimizer=optimizer, objects={"again": True})  # overwrite
    assert manager.checkpoints() == [str(tmp_path / n) for n in ("d", "e")]
    keep_all = CheckpointManager(tmp_path)
    for name in ("f", "g", "h"):
        keep_all.save(name, model=model, optimizer=optimizer, objects={})
    assert len(keep_all.checkpoints()) == 5


# -- object store -------------------------------------------------------------------------------


def test_remote_folder_saves_finds_and_loads_through_another_cache(s3_bucket, tmp_path):
    folder = f"{s3_bucket}/runs/one"
    model, optimizer = _trained()
    writer = CheckpointManager(folder, keep=1, cache_dir=str(tmp_path / "stage"))
    writer.save("ba1", model=model, optimizer=optimizer, objects={})
    _train(model, optimizer, 1, seed=9)
    path = writer.save(
        "ba2",
        model=model,
        optimizer=optimizer,
        objects={"w": torch.ones(3)},
        rank_objects={"rng": capture_rng()},
    )
    assert path == f"{folder}/ba2" and writer.latest() == path
    stored = list_objects(f"{folder}/")
    assert f"{folder}/latest" in stored and f"{folder}/ba2/manifest.json" in stored
    assert not [url for url in stored if "/ba1/" in url]  # keep=1
    assert not os.listdir(tmp_path / "stage")  # staging removed after upload

    reader = CheckpointManager(folder, cache_dir=str(tmp_path / "cache"))
    fresh = _model(seed=4)
    fresh_optimizer = _optimizer(fresh)
    objects, mine = reader.load(reader.latest(), model=fresh, optimizer=fresh_optimizer)
    _assert_same(_full_state(fresh, fresh_optimizer), _full_state(model, optimizer))
    assert torch.equal(objects["w"], torch.ones(3)) and "rng" in mine
    assert not os.listdir(tmp_path / "cache")  # the downloaded copy is gone once loaded

    # No manifest: not listed, not loaded; nothing at all: not found.
    from streaming.storage import delete_object

    delete_object(f"{path}/manifest.json")
    assert reader.latest() is None
    with pytest.raises(IncompleteCheckpointError, match="ba2 is incomplete"):
        reader.load(path, model=fresh, optimizer=None)
    with pytest.raises(CheckpointNotFoundError, match="nothing is stored there"):
        reader.load(f"{folder}/nope", model=fresh, optimizer=None)


def _remote_body(rank, world, folder, cache):
    _forked_setup()
    model = _sharded(seed=21)
    optimizer = _optimizer(model)
    _train(model, optimizer, 1, seed=30)
    manager = CheckpointManager(folder, cache_dir=cache)
    path = manager.save(
        "ba1", model=model, optimizer=optimizer, objects={"n": 1}, rank_objects={"rank": rank}
    )
    return path, _map_tensors(_full_state(model, optimizer), lambda t: t.numpy())


@pytest.mark.distributed
def test_two_ranks_save_to_an_object_store_and_one_rank_loads_it(s3_bucket, tmp_path):
    folder = f"{s3_bucket}/runs/two"
    ranks = run_distributed(_remote_body, world_size=2, args=(folder, str(tmp_path / "stage")))
    path, saved = ranks[0][0], _map_tensors(ranks[0][1], torch.from_numpy)
    manager = CheckpointManager(folder, cache_dir=str(tmp_path / "cache"))
    manifest = manager.inspect(path)
    assert manager.latest() == path and manifest.world_size == 2 and manifest.rank_objects == [0, 1]
    assert {"state/__0_0.distcp", "state/__1_0.distcp", "state/.metadata"} <= set(manifest.files)
    one = _model(seed=22)
    one_optimizer = _optimizer(one)
    objects, mine = manager.load(path, model=one, optimizer=one_optimizer)  # 2 -> 1, from S3
    _assert_same(_full_state(one, one_optimizer), saved)
    assert objects == {"n": 1} and mine == {"rank": 0}


# -- bad input ----------------------------------------------------------------------------------


def test_bad_paths_and_arguments_give_clear_errors(tmp_path):
    model, optimizer = _trained(steps=1)
    manager = CheckpointManager(tmp_path / "ck")
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*missing.*does not exist"):
        manager.load(tmp_path / "missing", model=model, optimizer=optimizer)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointNotFoundError, match="is a file"):
        manager.inspect(tmp_path / "file")
    assert manager.latest() is None and manager.checkpoints() == []
    path = manager.save("ba1", model=model, optimizer=None, objects={})
    with pytest.raises(IncompleteCheckpointError, match=r"save folder, not a checkpoint.*ba1"):
        manager.load(tmp_path / "ck", model=model, optimizer=None)
    with pytest.raises(CheckpointError, match="saved without optimizer state"):
        manager.load(path, model=model, optimizer=optimizer)
    with pytest.raises(
        CheckpointError, match=r"does not fit the model.*emb.weight: \(32, 16\) saved"
    ):
        manager.load(path, model=_model(dim=8), optimizer=None)

    manifest = json.loads((tmp_path / "ck" / "ba1" / "manifest.json").read_text())
    manifest["version"] = 99
    (tmp_path / "ck" / "ba1" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="format version 99; this composer-lite reads"):
        manager.latest()

    for name in ("", ".hidden", "a/b", "latest"):
        with pytest.raises(ValueError, match="checkpoint name"):
            manager.save(name, model=model, optimizer=None, objects={})
    for keep in (0, -2, 1.5):
        with pytest.raises(ValueError, match="keep="):
            CheckpointManager(tmp_path, keep=keep)
    with pytest.raises(ValueError, match="expected an RNG state"):
        restore_rng({"torch": torch.get_rng_state(), "bogus": 1})


def test_a_save_that_would_not_fit_the_disk_is_refused_before_writing(tmp_path, monkeypatch):
    from composer_lite.checkpoint import space

    model, optimizer = _trained()
    manager = CheckpointManager(tmp_path / "ckpt")
    first = manager.save("ep0-ba1", model=model, optimizer=optimizer, objects={})
    needed = space.tensor_bytes(get_state_dict(model, optimizer))
    assert needed > 3 * sum(p.numel() * 4 for p in model.parameters())  # weights + 2 moments
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(space.shutil, "disk_usage", lambda path: usage(1 << 40, 0, 1 << 20))
    with pytest.raises(CheckpointError, match=r"checkpoint ep0-ba2: its tensors need .* GiB in"):
        manager.save("ep0-ba2", model=model, optimizer=optimizer, objects={})
    assert manager.latest() == first and not any(".tmp-" in n for n in os.listdir(manager.folder))


def test_free_space_adds_up_the_ranks_that_share_a_filesystem():
    from composer_lite.checkpoint.space import SpaceNeed, check_space

    gib = 1 << 30
    two_on_one = [SpaceNeed("a", "/ckpt", 1, 30 * gib, 50 * gib) for _ in range(2)]
    with pytest.raises(CheckpointError, match=r"need 60.0 GiB in /ckpt \(on a\), which has 50.0"):
        check_space(two_on_one, name="ep1")
    check_space(two_on_one[:1], name="ep1")  # one rank's 30 GiB fit
    hosts = [SpaceNeed(h, "/ckpt", 1, 30 * gib, 50 * gib) for h in "ab"]
    check_space(hosts, name="ep1")  # each host's own disk
    disks = [SpaceNeed("a", f"/d{i}", i, 30 * gib, 50 * gib) for i in range(2)]
    check_space(disks, name="ep1")
