"""`foundry.checkpoints.load_model`: a Hugging Face MPT directory or a save folder of ours."""

from __future__ import annotations

import json

import pytest
import torch

from foundry.checkpoints import is_hf_dir, load_model
from mpt import MPTConfig, MPTForCausalLM
from mpt.hf import export_hf


def test_hf_directory_loads_with_the_same_logits(tmp_path):
    torch.manual_seed(0)
    config = MPTConfig(d_model=32, n_heads=2, n_layers=2, vocab_size=64, max_seq_len=16)
    model = MPTForCausalLM(config).eval()
    export_hf(model, None, tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")
    assert is_hf_dir(str(tmp_path / "hf")) and not is_hf_dir(str(tmp_path))

    loaded = load_model(str(tmp_path / "hf"))
    assert (loaded.source, loaded.tokenizer, loaded.train_config) == (
        "hf",
        str(tmp_path / "hf"),
        None,
    )
    assert loaded.model.config.attn_impl == "sdpa"  # the backend for the CPU
    x = torch.randint(0, 64, (2, 8))
    torch.testing.assert_close(loaded.model(x).logits, model(x).logits, atol=1e-5, rtol=1e-5)


def test_neither_ours_nor_hf_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(FileNotFoundError, match="neither a foundry save folder"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_model(str(tmp_path))
