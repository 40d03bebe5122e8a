"""The errors a user may catch, against mosaicml-streaming 0.13 itself: the same scenarios run
against both libraries (one code, `RUNNER`, executed with each one's `streaming`), and each of
our errors must be an instance of the class mosaicml raises (ours are subclasses that also say
more); where mosaicml raises nothing, neither may we.
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path

import pytest

import streaming
from streaming import MDSWriter
from streaming.errors import CacheConflictError

# Runs in both interpreters: `lib` is that interpreter's `streaming`; returns {scenario: the
# class of the error it raised (described by `describe`), or None}.
RUNNER = r"""
import os, tempfile

def run_scenarios(lib, root, index_bytes, describe):
    def path(name):
        return os.path.join(root, name) if name in DATASETS else tempfile.mkdtemp(prefix="err-")

    def dataset(**kwargs):
        shared = {}
        def where(value):
            if isinstance(value, str) and value.startswith("@"):
                return shared.setdefault(value, tempfile.mkdtemp(prefix="err-"))
            return path(value) if isinstance(value, str) and value in DATASETS else value
        streams = kwargs.pop("streams", None)
        kwargs = {k: where(v) if k in ("local", "remote") else v for k, v in kwargs.items()}
        if streams is not None:
            kwargs["streams"] = [
                lib.Stream(**{k: where(v) if k in ("local", "remote") else v
                              for k, v in s.items()}) for s in streams]
        return lib.StreamingDataset(**kwargs)

    def write(columns, samples=(), **options):
        with lib.MDSWriter(out=tempfile.mkdtemp(prefix="err-") + "/out", columns=columns,
                           **options) as writer:
            for sample in samples:
                writer.write(sample)

    def live_conflict():
        folder = tempfile.mkdtemp(prefix="err-")
        first = dataset(remote="plain", local=folder)
        try:
            dataset(remote="other", local=folder)
        finally:
            del first

    plain = lambda: dataset(local="plain")
    cases = {
        "corrupt-index": lambda: dataset(local="badjson"),
        "index-version": lambda: dataset(local="v3"),
        "no-index": lambda: dataset(local="noindex"),
        "no-samples": lambda: dataset(local="empty"),
        "pickle": lambda: dataset(local="pickled"),
        "pickle-allowed": lambda: dataset(local="pickled", allow_unsafe_types=True),
        "streams-and-local": lambda: dataset(streams=[{"local": "plain"}], local="plain"),
        "nothing": lambda: dataset(),
        "sampling-method": lambda: dataset(local="plain", sampling_method="nope"),
        "batching-method": lambda: dataset(local="plain", batching_method="nope"),
        "granularity": lambda: dataset(local="plain", sampling_granularity=0),
        "shuffle-seed": lambda: dataset(local="plain", shuffle_seed=-1),
        "epoch-size": lambda: dataset(local="plain", epoch_size=-5),
        "mixed-weights": lambda: dataset(streams=[{"local": "plain", "proportion": 1},
                                                 {"local": "other", "repeat": 1}]),
        "cache-limit-index": lambda: dataset(remote="plain", local="@a", cache_limit=index_bytes),
        "cache-limit-shards": lambda: dataset(remote="plain", local="@a",
                                              cache_limit=index_bytes + 1),
        "one-local-two-remotes": lambda: dataset(streams=[{"remote": "plain", "local": "@a"},
                                                          {"remote": "other", "local": "@a"}]),
        "live-conflict": live_conflict,
        "stream-negative": lambda: lib.Stream(local=path("plain"), proportion=-1),
        "stream-two-weights": lambda: lib.Stream(local=path("plain"), proportion=1, repeat=1),
        "stream-retry": lambda: lib.Stream(local=path("plain"), download_retry=-1),
        "stream-timeout": lambda: lib.Stream(local=path("plain"), download_timeout=0),
        "index-out-of-range": lambda: plain()[30],
        "index-negative-out-of-range": lambda: plain()[-31],
        "index-str": lambda: plain()["a"],
        "index-float": lambda: plain()[1.5],
        "writer-encoding": lambda: write({"x": "nope"}),
        "writer-compression": lambda: write({"x": "int"}, compression="nope"),
        "writer-hash": lambda: write({"x": "int"}, hashes=["nope"]),
        "writer-hash-order": lambda: write({"x": "int"}, hashes=["xxh64", "sha1"]),
        "writer-size": lambda: write({"x": "int"}, size_limit=-1),
        "writer-size-big": lambda: write({"x": "int"}, size_limit=2**32),
        "writer-kwarg": lambda: write({"x": "int"}, bogus=1),
        "writer-missing-column": lambda: write({"x": "int", "y": "str"}, [{"x": 1}]),
        "writer-wrong-type": lambda: write({"x": "int"}, [{"x": "one"}]),
    }
    out = {}
    for name, case in cases.items():
        try:
            case()
            out[name] = None
        except Exception as err:
            out[name] = describe(err)
    return out
"""
DATASETS = ["plain", "other", "pickled", "empty", "badjson", "v3", "noindex"]


def _write(out: Path, columns: dict, samples: list) -> None:
    with MDSWriter(out=str(out), columns=columns) as writer:
        for sample in samples:
            writer.write(sample)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("errors")
    _write(root / "plain", {"id": "int"}, [{"id": i} for i in range(30)])
    _write(root / "other", {"id": "int"}, [{"id": -i} for i in range(30)])
    _write(root / "pickled", {"obj": "pkl"}, [{"obj": {"a": 1}}])
    _write(root / "empty", {"id": "int"}, [])
    for name, text in [("badjson", "{not json"), ("v3", '{"version": 3, "shards": []}')]:
        (root / name).mkdir()
        (root / name / "index.json").write_text(text)
    (root / "noindex").mkdir()
    return root


def _scenarios(lib, root: Path, describe) -> dict:
    namespace = {"DATASETS": DATASETS}
    exec(compile(RUNNER, "<runner>", "exec"), namespace)
    index_bytes = (root / "plain" / "index.json").stat().st_size
    return namespace["run_scenarios"](lib, str(root), index_bytes, describe)


_MOSAIC = (
    RUNNER
    + r"""
import warnings
warnings.simplefilter("ignore")
def describe(err):
    return [type(err).__module__, type(err).__qualname__, str(err)[:300]]
result = run_scenarios(streaming, args["root"], args["index_bytes"], describe)
"""
)


@pytest.fixture(scope="module")
def outcomes(mosaic, root):
    index_bytes = (root / "plain" / "index.json").stat().st_size
    args = {"root": str(root), "index_bytes": index_bytes}
    theirs = mosaic.call(f"DATASETS = {DATASETS!r}\n" + _MOSAIC, args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = _scenarios(streaming, root, lambda err: err)
    return theirs, ours


def _their_class(described: list[str]) -> type[BaseException]:
    module, name = described[0], described[1]
    assert not module.startswith("streaming"), f"mosaicml raised its own class {described}"
    return getattr(importlib.import_module(module), name)


def test_we_fail_where_mosaic_fails_with_a_subclass_of_its_error(outcomes):
    theirs, ours = outcomes
    assert theirs.keys() == ours.keys()
    wrong = {}
    for name, described in theirs.items():
        error = ours[name]
        if described is None or error is None:
            if described is not error:
                wrong[name] = (described, repr(error))
        elif not isinstance(error, _their_class(described)):
            wrong[name] = (described, repr(error))
        elif not isinstance(error, streaming.errors.StreamingError):
            assert type(error).__module__ == "builtins", (name, repr(error))
    assert not wrong, wrong


def test_what_the_messages_name(outcomes):
    """Our messages name the file, the argument or the folder, and what was expected."""
    _, ours = outcomes
    assert "index.json" in str(ours["corrupt-index"]) and "not valid JSON" in str(
        ours["corrupt-index"]
    )
    assert ours["corrupt-index"].pos == 1 and ours["corrupt-index"].doc == "{not json"
    assert "noindex" in str(ours["no-index"]) and "index.json" in str(ours["no-index"])
    assert "'obj' (pkl)" in str(ours["pickle"]) and "allow_unsafe_types" in str(ours["pickle"])
    assert "shuffle_seed=-1" in str(ours["shuffle-seed"])
    assert "download_retry=-1" in str(ours["stream-retry"])
    assert "download_timeout=0" in str(ours["stream-timeout"])
    assert isinstance(ours["live-conflict"], CacheConflictError)
    assert os.sep in str(ours["live-conflict"]) and "other" in str(ours["live-conflict"])
