"""llm-foundry's pretraining layout both ways (through mosaicml-streaming itself), and data prep
from and to a real S3 API (moto's server on 127.0.0.1)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from foundry.compose import compose_config
from foundry.data.format import tokens_of
from foundry.data.prep import REPORT_FILE, PrepError, prepare
from foundry.schema import DataPrepCommand
from streaming import StreamingDataset

from .conftest import random_text, write_jsonl


def prep(tmp_path, tokenizer, **settings):
    overrides = {"max_seq_len": 32, "num_proc": 1, "progress": "false", "tokenizer": tokenizer}
    overrides.update(settings)
    cfg = compose_config("data_prep", [f"{k}={v}" for k, v in overrides.items()])
    return prepare(cfg.build(DataPrepCommand))


def all_tokens(ds: StreamingDataset) -> list[np.ndarray]:
    return [tokens_of(ds[i]) for i in range(ds.num_samples)]


def small_corpus(folder, n=60):
    import random

    rng = random.Random(5)
    return write_jsonl(folder / "a.jsonl", [random_text(rng, 30 + i) for i in range(n)])


def test_llm_foundry_layouts_both_ways(tmp_path, tiny_tokenizer, mosaic):
    rows = [np.arange(i, i + 16, dtype=np.int32) for i in range(24)]
    small_corpus(tmp_path / "corpus")
    prep(tmp_path, tiny_tokenizer, inputs=f"[{tmp_path / 'corpus'}]", out=tmp_path / "ours")
    # mosaicml-streaming's MDSWriter writes llm-foundry's two layouts: `tokens` (ndarray:int32,
    # convert_dataset_* since v0.8) and the older `bytes` (the ids' raw int64 bytes); its
    # StreamingDataset reads what foundry wrote
    (theirs,) = mosaic.batch(
        writes=[
            {
                "out": tmp_path / "new",
                "columns": {"tokens": "ndarray:int32"},
                "samples": [{"tokens": r} for r in rows],
                "compression": "zstd",
            },
            {
                "out": tmp_path / "old",
                "columns": {"bytes": "bytes"},
                "samples": [{"bytes": r.astype(np.int64).tobytes()} for r in rows],
            },
        ],
        reads=[{"path": tmp_path / "ours"}],
    )
    for folder in ("new", "old"):
        ds = StreamingDataset(local=str(tmp_path / folder), shuffle=False, batch_size=1)
        got = all_tokens(ds)
        assert [g.tolist() for g in got] == [r.tolist() for r in rows], folder
    ours = all_tokens(StreamingDataset(local=str(tmp_path / "ours"), shuffle=False, batch_size=1))
    # llm-foundry's reader: sample["tokens"] when present, else np.frombuffer(bytes, int64)
    assert [np.asarray(s["tokens"]).tolist() for s in theirs] == [o.tolist() for o in ours]
    assert all(np.asarray(s["tokens"]).dtype == np.int32 for s in theirs)


def test_tokens_of_refuses_other_layouts():
    with pytest.raises(KeyError, match="expected 'tokens'"):
        tokens_of({"input_ids": [1]})
    with pytest.raises(ValueError, match="whole number of int64"):
        tokens_of({"bytes": b"123"})


def test_prep_from_and_to_s3(s3_bucket, tmp_path, tiny_tokenizer):
    from streaming.storage import join_url, read_bytes, upload_file

    corpus = small_corpus(tmp_path / "corpus")
    upload_file(corpus, join_url(s3_bucket, "raw/a.jsonl"))
    out = join_url(s3_bucket, "mds")
    report = prep(
        tmp_path,
        tiny_tokenizer,
        inputs=f"[{join_url(s3_bucket, 'raw')}]",
        out=out,
        work_dir=tmp_path / "work",
    )
    assert json.loads(read_bytes(join_url(out, REPORT_FILE))) == report
    prep(tmp_path, tiny_tokenizer, inputs=f"[{tmp_path / 'corpus'}]", out=tmp_path / "local")
    remote = StreamingDataset(
        remote=out, local=str(tmp_path / "cache"), shuffle=False, batch_size=1
    )
    local = StreamingDataset(local=str(tmp_path / "local"), shuffle=False, batch_size=1)
    assert [t.tolist() for t in all_tokens(remote)] == [t.tolist() for t in all_tokens(local)]
    with pytest.raises(PrepError, match="already holds a dataset"):
        prep(tmp_path, tiny_tokenizer, inputs=f"[{tmp_path / 'corpus'}]", out=out)
    with pytest.raises(Exception, match="nothing"):
        prep(
            tmp_path,
            tiny_tokenizer,
            inputs=f"[{join_url(s3_bucket, 'nothing/')}]",
            out=join_url(s3_bucket, "mds2"),
            work_dir=tmp_path / "work2",
        )
