"""`python -m streaming`: inspect, verify, convert, and their errors."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from streaming import StreamingDataset
from streaming.cli import main


def run_module(*args: str) -> subprocess.CompletedProcess:
    """`python -m streaming ...` in a fresh interpreter: the entry point and its exit status."""
    return subprocess.run(
        [sys.executable, "-m", "streaming", *args], capture_output=True, text=True, timeout=120
    )


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """What `python -m streaming ...` does (`sys.exit(main())`), run in this process: its exit
    status (argparse's SystemExit included), stdout and stderr. A fresh interpreter per call cost
    an import of torch each; `run_module` runs the real entry point once."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:
            code = e.code
    code = 0 if code is None else code
    return subprocess.CompletedProcess(
        ["-m", "streaming", *args], code, out.getvalue(), err.getvalue()
    )


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text(
        "".join(json.dumps({"text": f"doc {i} " + "x" * i, "n": i}) + "\n" for i in range(200))
    )
    return path


def test_convert_inspect_verify_round_trip(tmp_path, jsonl, capsys):
    out = tmp_path / "mds"
    assert main(["convert", str(jsonl), "--out", str(out), "--size-limit", "2kb"]) == 0
    assert "wrote 200 samples" in capsys.readouterr().out
    ds = StreamingDataset(local=str(out))
    assert [ds[i]["n"] for i in range(200)] == list(range(200))
    assert ds[5]["text"] == "doc 5 xxxxx"

    assert main(["inspect", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"]["samples"] == 200 and report["total"]["shards"] > 3
    assert report["total"]["columns"] == {"text": "str", "n": "int"}
    assert report["total"]["compression"] == ["zstd"]

    assert main(["inspect", str(out), "--shards"]) == 0
    text = capsys.readouterr().out
    assert "samples      200" in text and "shard.00000.mds.zstd" in text

    assert main(["verify", str(out)]) == 0
    assert (
        f"{report['total']['shards']}/{report['total']['shards']} shards ok (hashes xxh64)"
        in capsys.readouterr().out
    )


def test_verify_reports_each_bad_shard_and_exits_nonzero(tmp_path, jsonl, capsys):
    out = tmp_path / "mds"
    assert (
        main(["convert", str(jsonl), "--out", str(out), "--size-limit", "2kb", "--compression", ""])
        == 0
    )
    capsys.readouterr()
    for name in ("shard.00001.mds", "shard.00003.mds"):
        data = bytearray((out / name).read_bytes())
        data[-3] ^= 0xFF
        (out / name).write_bytes(bytes(data))
    assert main(["verify", str(out)]) == 1
    text = capsys.readouterr().out
    assert "shard.00001.mds: BAD" in text and "shard.00003.mds: BAD" in text
    assert "bad shards: shard.00001.mds, shard.00003.mds" in text
    assert "shard.00000.mds: BAD" not in text


def test_convert_text_files_one_sample_per_line(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("first line\n\nsecond line\n")
    b.write_text("third\n")
    result = run_cli("convert", str(a), str(b), "--out", str(tmp_path / "mds"))
    assert result.returncode == 0, result.stderr
    ds = StreamingDataset(local=str(tmp_path / "mds"))
    assert [ds[i]["text"] for i in range(ds.num_samples)] == ["first line", "second line", "third"]


def test_cli_errors_are_clear(tmp_path, jsonl):
    result = run_module("inspect", str(tmp_path / "nowhere"))  # the entry point itself
    assert result.returncode == 2 and f"no MDS dataset at {tmp_path / 'nowhere'}" in result.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json\n')
    result = run_cli("convert", str(bad), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and f"{bad}:2: not valid JSON" in result.stderr
    assert not (tmp_path / "o" / "index.json").exists()  # nothing half-written looks complete
    result = run_cli("convert", str(jsonl), "--out", str(tmp_path / "o2"), "--compression", "lz77")
    assert result.returncode == 2 and "lz77" in result.stderr
    assert "inspect" in run_cli("--help").stdout


def test_convert_errors_name_the_file_and_line(tmp_path):
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"text": "a", "n": 1}\n\n{"text": "b", "n": 2.5}\n')
    result = run_cli("convert", str(mixed), "--out", str(tmp_path / "o1"))
    assert result.returncode == 2
    assert f"{mixed}:3: column 'n' (encoding 'int')" in result.stderr  # was: no file, no line
    assert f"columns inferred from {mixed}:1" in result.stderr and "--columns" in result.stderr
    ok = run_cli(
        "convert", str(mixed), "--out", str(tmp_path / "o2"), "--columns", "text:str,n:float64"
    )
    assert ok.returncode == 0, ok.stderr
    binary = tmp_path / "bad.txt"
    binary.write_bytes(b"ok\nfine\n\xff\xfe bad\n")
    result = run_cli("convert", str(binary), "--out", str(tmp_path / "o3"))
    assert result.returncode == 2 and f"{binary}:3: not UTF-8 text" in result.stderr
    for out in ("o1", "o3"):
        assert not (tmp_path / out / "index.json").exists()


def _zstd_dataset(out: Path, count: int = 60, hashes=("xxh64",)) -> Path:
    from streaming import MDSWriter

    with MDSWriter(
        out=str(out),
        columns={"id": "int", "text": "str"},
        compression="zstd",
        hashes=list(hashes),
        size_limit=400,
    ) as writer:
        for i in range(count):
            writer.write({"id": i, "text": f"sample {i} " * 3})
    return out


def _spoil(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-4] ^= 0x21
    path.write_bytes(bytes(data))


def test_verify_answers_honestly_on_an_s3_cache_folder_with_keep_zip_false(
    tmp_path, s3_bucket, capsys
):
    from streaming.rawfill import finish_fills
    from streaming.storage import Uploader

    src, remote, cache = _zstd_dataset(tmp_path / "src"), f"{s3_bucket}/ds", tmp_path / "cache"
    with Uploader(remote) as up:
        for name in sorted(p.name for p in src.iterdir()):
            up.upload(str(src / name), name)
    ds = StreamingDataset(remote=remote, local=str(cache), predownload=0)  # keep_zip=False
    ds[0], ds[int(ds._shard_ends[0])]  # two shards are read, so cached
    assert finish_fills(30) == 0
    total = len(ds._shard_ends)
    assert sorted(p.name for p in cache.glob("shard.*")) == ["shard.00000.mds", "shard.00001.mds"]
    assert main(["verify", str(cache), "-v"]) == 0  # was: every shard BAD (no .zstd file)
    out = capsys.readouterr().out
    summary = f"2/{total} shards ok (hashes xxh64), {total - 2} not cached"
    assert f"{summary} (this folder caches {remote}" in out
    assert (
        f"{cache / 'shard.00000.mds'}: hashes" in out and "shard.00002.mds.zstd: not cached" in out
    )

    _spoil(cache / "shard.00001.mds")
    assert main(["verify", str(cache)]) == 1
    out = capsys.readouterr().out
    assert "shard.00001.mds.zstd: BAD: " in out and "xxh64 of the decompressed copy" in out
    assert "(a reader fetches the shard again)" in out and "bad shards: shard.00001.mds.zstd" in out
    # The remote with that cache: what is cached is checked, the rest fetched and checked.
    assert main(["verify", remote, "--cache", str(cache)]) == 1
    out = capsys.readouterr().out
    assert f"{total - 1}/{total} shards ok (hashes xxh64)" in out and "not cached" not in out
    assert "bad shards: shard.00001.mds.zstd" in out


def test_verify_checks_the_decompressed_copies_of_a_local_dataset(tmp_path, capsys):
    from streaming.rawfill import finish_fills

    out = _zstd_dataset(tmp_path / "ds")
    ds = StreamingDataset(local=str(out), predownload=0)
    assert [s["id"] for s in ds] == list(range(60)) and finish_fills(30) == 0
    total = len(ds._shard_ends)
    assert main(["verify", str(out), "-v"]) == 0
    text = capsys.readouterr().out
    assert f"{total}/{total} shards ok (hashes xxh64)" in text
    assert f"{out / 'shard.00000.mds'}: hashes" in text
    assert f"{out / 'shard.00000.mds.zstd'}: hashes" in text
    _spoil(out / "shard.00002.mds")  # the copy a reader would open first
    assert main(["verify", str(out)]) == 1  # was: ok (only the compressed file was checked)
    text = capsys.readouterr().out
    assert "shard.00002.mds.zstd: BAD: " in text
    assert "(a reader makes it again from shard.00002.mds.zstd)" in text
    (out / "shard.00003.mds.zstd").unlink()
    (out / "shard.00003.mds").unlink()
    assert main(["verify", str(out)]) == 1
    missing = out / "shard.00003.mds.zstd"
    text = capsys.readouterr().out
    assert f"shard.00003.mds.zstd: BAD: missing: {missing} does not exist" in text


def test_verify_of_data_without_hashes_says_what_it_checked(tmp_path, capsys):
    out = _zstd_dataset(tmp_path / "ds", hashes=())
    assert main(["verify", str(out)]) == 0
    text = capsys.readouterr().out
    assert "shards ok (no hashes recorded; sizes and layout only)" in text
