"""Data mixes: a `data/` config's sources and proportions as `streaming.Stream`s."""

from __future__ import annotations

import numpy as np
import pytest

from foundry.data.mix import MixError, mix_table, streams_from_config
from foundry.schema import DataConfig
from foundry.validate import build
from streaming import MDSWriter, StreamingDataset


def write_source(folder, value: int, samples: int) -> None:
    with MDSWriter(out=str(folder), columns={"tokens": "ndarray:int32"}) as writer:
        for _ in range(samples):
            writer.write({"tokens": np.full(8, value, dtype=np.int32)})


def test_proportions_become_streams_the_dataset_mixes(tmp_path):
    write_source(tmp_path / "web", 1, 50)
    write_source(tmp_path / "code", 2, 20)
    data = build(
        DataConfig,
        {
            "root": str(tmp_path),
            "max_seq_len": 8,
            "sources": {
                "web": {"local": "web", "proportion": 0.75},
                "code": {"local": "code", "proportion": 0.25},
            },
        },
    )
    streams = streams_from_config(data)
    assert [s.local for s in streams] == [str(tmp_path / "web"), str(tmp_path / "code")]
    ds = StreamingDataset(
        streams=streams, epoch_size=40, batch_size=1, shuffle=True, shuffle_seed=3
    )
    values = [int(sample["tokens"][0]) for sample in ds]  # one epoch, as mixed
    assert values.count(1) == 30 and values.count(2) == 10
    rows = {r.name: r for r in mix_table(data, tokens=800)}
    assert rows["web"].source_tokens == 400 and rows["code"].source_tokens == 160
    assert rows["code"].epochs == pytest.approx(0.25 * 800 / 160)


def test_mix_errors_name_the_source(tmp_path):
    write_source(tmp_path / "web", 1, 5)
    missing = build(
        DataConfig,
        {
            "sources": {
                "web": {"local": str(tmp_path / "web")},
                "gone": {"local": str(tmp_path / "gone")},
            }
        },
    )
    with pytest.raises(
        MixError, match=r"data.sources.gone.local: .*gone holds no prepared dataset"
    ):
        streams_from_config(missing)
    partial = build(
        DataConfig, {"sources": {"a": {"local": "x", "proportion": 0.5}, "b": {"local": "y"}}}
    )
    with pytest.raises(MixError, match="proportion is given for some sources but not for b"):
        streams_from_config(partial)
    with pytest.raises(MixError, match="data.sources.a: give local"):
        streams_from_config(build(DataConfig, {"sources": {"a": {}}}))


def test_epoch_size_with_repeat_or_choose_is_refused_naming_the_sources(tmp_path):
    write_source(tmp_path / "web", 1, 5)
    write_source(tmp_path / "code", 2, 5)
    sources = {
        "web": {"local": "web", "repeat": 2.0},
        "code": {"local": "code", "choose": 3},
    }
    data = build(DataConfig, {"root": str(tmp_path), "epoch_size": "1k", "sources": sources})
    refused = (
        r"data.epoch_size='1k' needs relative weights, but data.sources.web.repeat, "
        r"data.sources.code.choose set absolute amounts.*give every source a proportion"
    )
    with pytest.raises(MixError, match=refused):
        streams_from_config(data)  # what the training loaders build the dataset from
    with pytest.raises(MixError, match=refused):
        mix_table(data, tokens=1000)  # `foundry data mix`
    unset = build(DataConfig, {"root": str(tmp_path), "epoch_size": "0", "sources": sources})
    assert len(streams_from_config(unset)) == 2  # 0 is no epoch size, as in streaming
