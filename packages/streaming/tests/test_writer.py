"""MDSWriter: shard boundaries, arguments, atomicity, bad samples, and remote output."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from streaming.errors import SampleError
from streaming.format import INDEX_NAME, encode_shard_config, parse_index
from streaming.shard import Shard
from streaming.writer import MDSWriter

FIXED = {"x": "ndarray:uint8:100"}  # every sample is 100 bytes + a 4-byte offset


def fixed_sample(i: int) -> dict:
    return {"x": np.full(100, i, np.uint8)}


def overhead(columns=FIXED, compression=None, hashes=(), size_limit=None) -> int:
    names = sorted(columns)
    config = encode_shard_config(
        column_encodings=[columns[n] for n in names],
        column_names=names,
        column_sizes=[100] * len(names),
        compression=compression,
        hashes=list(hashes),
        size_limit=size_limit,
    )
    return 4 + 4 + len(config)


def index_of(path) -> list:
    return parse_index((path / INDEX_NAME).read_bytes(), str(path))


def read_all(path) -> list[dict]:
    out = []
    for info in index_of(path):
        with Shard.open(str(path / info.basename), info, allow_pickle=True) as shard:
            out.extend(shard[i] for i in range(len(shard)))
    return out


def test_shard_boundaries_follow_size_limit_exactly(tmp_path):
    limit = overhead(size_limit=1000) + 5 * 104
    limit = overhead(size_limit=limit) + 5 * 104  # the limit's digits are part of the config
    with MDSWriter(out=str(tmp_path / "ds"), columns=FIXED, size_limit=limit) as writer:
        for i in range(12):
            writer.write(fixed_sample(i))
    infos = index_of(tmp_path / "ds")
    assert [info.samples for info in infos] == [5, 5, 2]
    assert [info.raw_data.bytes for info in infos[:2]] == [limit, limit]  # full to the byte
    assert [s["x"][0] for s in read_all(tmp_path / "ds")] == list(range(12))
    shards = [f"shard.0000{i}.mds" for i in range(3)]
    assert sorted(os.listdir(tmp_path / "ds")) == [INDEX_NAME, *shards]


def test_size_limit_forms(tmp_path):
    for i, (given, recorded) in enumerate([("1kb", 1024), (None, None), (0, None), (2048.0, 2048)]):
        out = tmp_path / str(i)
        with MDSWriter(out=str(out), columns=FIXED, size_limit=given) as writer:
            for j in range(30):
                writer.write(fixed_sample(j))
        infos = index_of(out)
        assert {info.size_limit for info in infos} == {recorded}
        if recorded is None:
            assert len(infos) == 1
        else:
            per_shard = (recorded - overhead(size_limit=recorded)) // 104  # see FIXED
            assert len(infos) == -(-30 // per_shard)
    for bad in ("4gb", -1, "lots"):
        with pytest.raises(ValueError, match="size_limit"):
            MDSWriter(out=str(tmp_path / "bad"), columns=FIXED, size_limit=bad)


def test_a_sample_larger_than_the_limit_gets_its_own_shard(tmp_path):
    """mosaicml-streaming writes an empty shard 0 when the first sample is too big; we do not."""
    columns = {"b": "bytes"}
    sizes = [5000, 10, 10, 5000, 10]
    with MDSWriter(out=str(tmp_path / "ds"), columns=columns, size_limit=1000) as writer:
        for size in sizes:
            writer.write({"b": b"x" * size})
    assert [info.samples for info in index_of(tmp_path / "ds")] == [1, 2, 1, 1]
    assert [len(s["b"]) for s in read_all(tmp_path / "ds")] == sizes


def test_empty_dataset_has_an_empty_index(tmp_path):
    with MDSWriter(out=str(tmp_path / "ds"), columns=FIXED):
        pass
    assert (tmp_path / "ds" / INDEX_NAME).read_bytes() == b'{"shards": [], "version": 2}'


def test_files_appear_whole_and_the_index_last(tmp_path, monkeypatch):
    renamed = []
    real_replace = os.replace

    def spy(src, dst):
        assert os.path.basename(src).startswith(".") and src.endswith(".tmp")
        assert not os.path.exists(dst)
        renamed.append(os.path.basename(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    with MDSWriter(
        out=str(tmp_path / "ds"), columns=FIXED, compression="zstd", size_limit=600
    ) as writer:
        for i in range(12):
            writer.write(fixed_sample(i))
    assert renamed[-1] == INDEX_NAME and len(renamed) == 4
    assert renamed[:-1] == [f"shard.0000{i}.mds.zstd" for i in range(3)]
    assert not [n for n in os.listdir(tmp_path / "ds") if n.endswith(".tmp")]


def test_crash_inside_with_leaves_no_index(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="boom"):
        with MDSWriter(out=str(out), columns=FIXED, size_limit=600) as writer:
            for i in range(12):
                writer.write(fixed_sample(i))
            raise RuntimeError("boom")
    names = os.listdir(out)
    assert INDEX_NAME not in names and not [n for n in names if n.endswith(".tmp")]
    with pytest.raises(RuntimeError, match="aborted"):
        writer.finish()
    with pytest.raises(RuntimeError, match="aborted"):
        writer.write(fixed_sample(0))


def test_crash_while_writing_a_shard_leaves_no_partial_file(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    writer = MDSWriter(out=str(out), columns=FIXED, size_limit=600)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        with writer:
            for i in range(12):
                writer.write(fixed_sample(i))
    assert os.listdir(out) == []


def test_existing_folder(tmp_path):
    out = tmp_path / "ds"
    with MDSWriter(out=str(out), columns=FIXED, size_limit=600) as writer:
        for i in range(12):
            writer.write(fixed_sample(i))
    (out / "sub").mkdir()
    (out / "sub" / "junk").write_text("x")
    with pytest.raises(FileExistsError, match="not empty.*exist_ok=True"):
        MDSWriter(out=str(out), columns=FIXED)
    assert len(index_of(out)) == 3  # untouched
    writer = MDSWriter(out=str(out), columns={"s": "str"}, exist_ok=True)
    assert os.listdir(out) == []  # the old index and shards are gone before anything is written
    with writer:
        writer.write({"s": "new"})
    assert sorted(os.listdir(out)) == [INDEX_NAME, "shard.00000.mds"]
    assert read_all(out) == [{"s": "new"}]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        MDSWriter(out=str(tmp_path / "file"), columns=FIXED)


def test_bad_samples_raise_before_anything_is_written(tmp_path):
    columns = {"a": "int", "b": "str"}
    with MDSWriter(out=str(tmp_path / "ds"), columns=columns) as writer:
        writer.write({"a": 1, "b": "one"})
        for bad, needle in [
            ({"a": 2}, "missing ['b'], unexpected []"),
            ({"a": 2, "b": "x", "c": 3}, "missing [], unexpected ['c']"),
            ({"a": "2", "b": "x"}, "column 'a' (encoding 'int'): expected an int"),
            ({"a": 2, "b": 2.5}, "column 'b' (encoding 'str'): expected str, got float 2.5"),
            ([("a", 1)], "expected a sample dict"),
        ]:
            with pytest.raises(SampleError) as err:
                writer.write(bad)
            assert needle in str(err.value)
        writer.write({"a": 3, "b": "three"})
    assert read_all(tmp_path / "ds") == [{"a": 1, "b": "one"}, {"a": 3, "b": "three"}]


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"columns": {}}, ValueError, "non-empty"),
        (
            {"columns": {"a": "int", "b": "float128"}},
            ValueError,
            "'b': \"unknown MDS encoding 'float128'",
        ),
        ({"compression": "lz4"}, ValueError, "unknown compression 'lz4'"),
        ({"compression": "zstd:30"}, ValueError, "out of range"),
        ({"hashes": ["xxh64", "sha1"]}, ValueError, "sorted"),
        ({"hashes": ["crc32"]}, ValueError, "unknown hash algorithm 'crc32'"),
        ({"endpoint_url": "http://x"}, ValueError, "apply only to remote output"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, needle):
    args = {"out": str(tmp_path / "ds"), "columns": FIXED, **kwargs}
    with pytest.raises(error) as err:
        MDSWriter(**args)
    assert needle in str(err.value)
    assert not (tmp_path / "ds").exists()


def test_mosaicml_keyword_spellings_are_accepted(tmp_path, capsys):
    with MDSWriter(
        out=str(tmp_path / "ds"), columns=FIXED, progress_bar=True, max_workers=2, retry=1
    ) as w:
        w.write(fixed_sample(1))
    assert "shard.00000.mds: 1 samples" in capsys.readouterr().err


def test_pair_output_uploads_shards_then_index_and_keeps_local(tmp_path):
    local, remote = tmp_path / "local", tmp_path / "remote"  # a local folder serves as the remote
    with MDSWriter(
        out=(str(local), str(remote)),
        columns=FIXED,
        compression="gz",
        hashes=["sha1"],
        size_limit=600,
    ) as w:
        for i in range(12):
            w.write(fixed_sample(i))
    assert sorted(os.listdir(local)) == sorted(os.listdir(remote))
    assert (local / INDEX_NAME).read_bytes() == (remote / INDEX_NAME).read_bytes()
    assert [s["x"][0] for s in read_all(remote)] == list(range(12))


def test_pair_output_crash_uploads_no_index(tmp_path):
    local, remote = tmp_path / "local", tmp_path / "remote"
    with pytest.raises(KeyError):
        with MDSWriter(out=(str(local), str(remote)), columns=FIXED, size_limit=600) as w:
            for i in range(12):
                w.write(fixed_sample(i))
            raise KeyError("crash")
    assert INDEX_NAME not in os.listdir(remote) and INDEX_NAME not in os.listdir(local)


def test_rewriting_a_remote_dataset(tmp_path, s3_bucket):
    """A remote that holds a dataset: an error unless exist_ok; then its index goes first, so a
    crashed rewrite never looks complete (mixing new shards with the old index)."""
    from streaming.storage import object_exists

    for remote in (str(tmp_path / "remote"), f"{s3_bucket}/rewrite"):
        with MDSWriter(out=(str(tmp_path / "a"), remote), columns=FIXED, size_limit=600) as w:
            for i in range(12):
                w.write(fixed_sample(i))
        with pytest.raises(FileExistsError, match=f"{remote}/index.json exists.*exist_ok=True"):
            MDSWriter(out=(str(tmp_path / "b"), remote), columns=FIXED)
        with pytest.raises(KeyError):
            with MDSWriter(
                out=(str(tmp_path / "c"), remote), columns=FIXED, size_limit=600, exist_ok=True
            ) as w:
                for i in range(100, 106):
                    w.write(fixed_sample(i))
                raise KeyError("crash")  # was: the old index.json listed the new shards
        assert not object_exists(f"{remote}/{INDEX_NAME}")
        with MDSWriter(
            out=(str(tmp_path / "d"), remote), columns=FIXED, size_limit=600, exist_ok=True
        ) as w:
            for i in range(200, 203):
                w.write(fixed_sample(i))
        assert object_exists(f"{remote}/{INDEX_NAME}")
        for sub in "abcd":
            shutil.rmtree(tmp_path / sub, ignore_errors=True)


@pytest.mark.parametrize("keep_local", [False, True])
def test_s3_output(s3_bucket, keep_local):
    from streaming.storage import list_objects, read_bytes

    url = f"{s3_bucket}/data/ds"
    with MDSWriter(
        out=url,
        columns=FIXED,
        compression="zstd",
        hashes=["xxh64"],
        size_limit=600,
        keep_local=keep_local,
    ) as w:
        for i in range(12):
            w.write(fixed_sample(i))
    assert os.path.isdir(w.local) == keep_local  # the staging folder goes unless kept
    names = [u.rsplit("/", 1)[1] for u in list_objects(url + "/")]
    infos = parse_index(read_bytes(f"{url}/{INDEX_NAME}"), url)
    assert len(infos) > 2
    assert sorted(names) == [INDEX_NAME, *[f"shard.{i:05}.mds.zstd" for i in range(len(infos))]]
    ids = []
    for info in infos:
        with Shard.from_bytes(read_bytes(f"{url}/{info.basename}"), info) as shard:
            ids.extend(int(shard[i]["x"][0]) for i in range(len(shard)))
    assert ids == list(range(12))
