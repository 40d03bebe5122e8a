"""`python -m streaming`: inspect, verify, convert, and their errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streaming import StreamingDataset
from streaming.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streaming", *args], capture_output=True, text=True, timeout=120
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
    result = run_cli("inspect", str(tmp_path / "nowhere"))
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
