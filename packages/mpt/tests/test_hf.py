"""Hugging Face parity (`mpt.hf`): logits equal to transformers' `MptForCausalLM` both ways, a sharded
export that `from_pretrained` loads offline, import back, and loud refusals of what cannot convert.

transformers models are built from a small `MptConfig` with random weights (no hub, no network).
Tolerance: 1e-5 in fp32 -- the two models run the same products in the same dtype; only the ALiBi
bias differs by a constant per row (which softmax cancels) and the order of a few additions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("safetensors", reason="mpt.hf tests need safetensors (pip install 'mpt[hf]')")
transformers = pytest.importorskip(
    "transformers", reason="mpt.hf tests need transformers (pip install 'mpt[hf]')"
)

from mpt import MPTConfig, MPTForCausalLM, hf  # noqa: E402

SMALL = dict(d_model=96, n_layers=2, vocab_size=97, max_seq_len=64)
ATOL = 1e-5


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Random weights of a useful size, norm weights away from 1 so they are tested too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.2 * noise if p.dim() == 1 else 0.15 * noise)


def _hf_model(seed=0, n_heads=4, tie=True, attn=None, **extra):
    config = transformers.MptConfig(
        **SMALL, n_heads=n_heads, tie_word_embeddings=tie, attn_config=attn or {}, **extra
    )
    torch.manual_seed(seed)
    model = transformers.MptForCausalLM(config).eval()
    _perturb(model, seed)
    return model


def _ours(seed=0, **overrides) -> MPTForCausalLM:
    torch.manual_seed(seed)
    model = MPTForCausalLM(MPTConfig(**{**SMALL, "n_heads": 4, **overrides})).eval()
    _perturb(model, seed)
    return model


def _ids(batch=3, seq=24, seed=1):
    return torch.randint(
        0, SMALL["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(seed)
    )


@torch.no_grad()
def _assert_same_logits(ours: MPTForCausalLM, theirs) -> None:
    ids = _ids()
    expected = theirs(ids).logits
    actual = ours(ids).logits
    assert actual.shape == expected.shape == (3, 24, SMALL["vocab_size"])
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


# -- parity ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_heads", [4, 6, 12])  # 6 and 12: ALiBi slopes of a non-power of two
def test_hf_to_ours_logits_match(n_heads):
    theirs = _hf_model(n_heads=n_heads)
    ours = hf.from_hf_model(theirs, attn_impl="torch")
    assert ours.config.n_heads == n_heads and not ours.config.learned_pos_emb
    assert not hasattr(ours, "lm_head")  # tied
    _assert_same_logits(ours, theirs)


def test_hf_to_ours_untied_with_clip_scale_and_eps():
    attn = dict(clip_qkv=0.6, softmax_scale=0.3)
    theirs = _hf_model(seed=3, n_heads=6, tie=False, attn=attn, layer_norm_epsilon=1e-3)
    ours = hf.from_hf_model(theirs)
    c = ours.config
    assert (c.clip_qkv, c.softmax_scale, c.layer_norm_epsilon) == (0.6, 0.3, 1e-3)
    assert not c.tie_word_embeddings
    assert not torch.equal(ours.lm_head.weight, ours.transformer.wte.weight)
    _assert_same_logits(ours, theirs)
    # A copy, not shared memory.
    assert ours.transformer.wte.weight.data_ptr() != theirs.transformer.wte.weight.data_ptr()


@torch.no_grad()
def test_left_padded_batch_matches_on_real_tokens():
    theirs = _hf_model(seed=2, n_heads=6)
    ours = hf.from_hf_model(theirs)
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[0, :5] = mask[2, :11] = 0  # left padding; padded rows' logits are meaningless
    real = mask.bool()
    expected = theirs(ids, attention_mask=mask).logits[real]
    torch.testing.assert_close(
        ours(ids, attention_mask=mask).logits[real], expected, atol=ATOL, rtol=0
    )


@pytest.mark.parametrize(
    "overrides",
    [dict(n_heads=4), dict(n_heads=12), dict(n_heads=6, tie_word_embeddings=False, clip_qkv=0.5)],
)
def test_ours_to_hf_logits_match(overrides):
    ours = _ours(seed=5, **overrides)
    theirs = hf.to_hf_model(ours)
    assert isinstance(theirs, transformers.MptForCausalLM) and not theirs.training
    tied = theirs.lm_head.weight is theirs.transformer.wte.weight
    assert tied == ours.config.tie_word_embeddings
    _assert_same_logits(ours, theirs)


def test_config_round_trip_keeps_every_mapped_field():
    config = MPTConfig(
        **SMALL,
        n_heads=6,
        layer_norm_epsilon=1e-4,
        norm_type="layernorm",
        tie_word_embeddings=False,
        embedding_fraction=0.5,
        clip_qkv=2.5,
        softmax_scale=0.25,
        attn_pdrop=0.0,
        resid_pdrop=0.1,
        emb_pdrop=0.2,
    )
    hf_config = hf.config_to_hf(config)
    assert hf_config.learned_pos_emb is False and hf_config.architectures == ["MptForCausalLM"]
    assert hf.config_from_hf(hf_config) == config
    # a config.json dict works too, and missing keys take transformers' defaults
    assert hf.config_from_hf(json.loads(hf_config.to_json_string())) == config
    assert hf.config_from_hf({"model_type": "mpt"}).d_model == transformers.MptConfig().d_model
    off = {"model_type": "mpt", "attn_config": {"clip_qkv": 0}}  # transformers: 0 is off
    assert hf.config_from_hf(off).clip_qkv is None


def test_fractional_attn_pdrop_still_gives_a_loadable_config():
    hf_config = hf.config_to_hf(MPTConfig(**SMALL, n_heads=4, attn_pdrop=0.1))
    loaded = transformers.MptConfig.from_dict(hf_config.to_dict())  # what from_pretrained does
    assert loaded.attn_config.attn_pdrop in (0, 0.1)


# -- export and import -----------------------------------------------------------------------------
def test_export_sharded_loads_in_transformers_and_imports_back(tmp_path):
    ours = _ours(seed=7, n_heads=6)
    out = hf.export_hf(ours, None, tmp_path / "export", max_shard_size="40KB")
    files = sorted(os.listdir(out))
    shards = [f for f in files if f.startswith("model-")]
    assert len(shards) > 2 and all(f.endswith(f"-of-{len(shards):05d}.safetensors") for f in shards)
    assert "model.safetensors.index.json" in files and "config.json" in files
    assert sorted(os.listdir(tmp_path)) == ["export"]  # no temporary directory left behind
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MptForCausalLM"] and config["model_type"] == "mpt"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(ours.state_dict())  # tied: no lm_head in the files
    assert set(index["weight_map"].values()) == set(shards)

    theirs = transformers.MptForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert theirs.lm_head.weight is theirs.transformer.wte.weight
    _assert_same_logits(ours, theirs)

    back = hf.import_hf(out)
    assert back.config == ours.config
    expected = ours.state_dict()
    assert back.state_dict().keys() == expected.keys()
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_export_single_file_untied_in_bf16(tmp_path):
    from safetensors import safe_open

    ours = _ours(seed=8, tie_word_embeddings=False)
    out = hf.export_hf(ours.state_dict(), ours.config, tmp_path / "bf16", dtype=torch.bfloat16)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert hf.LM_HEAD in f.keys() and f.metadata() == {"format": "pt"}
        assert f.get_tensor(hf.LM_HEAD).dtype == torch.bfloat16
    back = hf.import_hf(out, attn_impl="sdpa")
    assert back.config.attn_impl == "sdpa"
    assert back.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(back.lm_head.weight, ours.lm_head.weight.to(torch.bfloat16))
    theirs = transformers.MptForCausalLM.from_pretrained(out, local_files_only=True)
    assert theirs.lm_head.weight.dtype == torch.bfloat16


def test_import_reads_pytorch_bin(tmp_path):
    theirs = _hf_model(seed=9)
    theirs.config.save_pretrained(tmp_path)
    torch.save(theirs.state_dict(), tmp_path / "pytorch_model.bin")  # lm_head tied: same storage
    ours = hf.import_hf(tmp_path)
    _assert_same_logits(ours, theirs)
    theirs.save_pretrained(tmp_path / "saved", max_shard_size="40KB")  # transformers' own shards
    assert (tmp_path / "saved" / "model.safetensors.index.json").exists()
    _assert_same_logits(hf.import_hf(tmp_path / "saved"), theirs)


# -- refusals --------------------------------------------------------------------------------------
UNSUPPORTED = [
    ("alibi", False),
    ("alibi_bias_max", 4),
    ("expansion_ratio", 2),
    ("no_bias", False),
    ("qk_ln", True),
    ("learned_pos_emb", True),
    ("kv_n_heads", 2),
    ("kv_n_heads", 1),
    ("logit_scale", 0.5),
    ("logit_scale", "inv_sqrt_d_model"),
]


@pytest.mark.parametrize(("field", "value"), UNSUPPORTED)
def test_export_refuses_what_transformers_cannot_compute(tmp_path, field, value):
    config = MPTConfig(**SMALL, n_heads=4, **{field: value})
    model = MPTForCausalLM(config, device="meta")  # refused before any weight is touched
    with pytest.raises(ValueError, match=rf"{field}={value!r}"):
        hf.export_hf(model, None, tmp_path / "out")
    with pytest.raises(ValueError, match=field):
        hf.config_to_hf(config)
    assert not (tmp_path / "out").exists() and not os.listdir(tmp_path)


def test_refusal_names_every_setting_at_once():
    config = MPTConfig(**SMALL, n_heads=4, alibi=False, qk_ln=True, no_bias=False, logit_scale=2.0)
    with pytest.raises(ValueError) as info:
        hf.check_hf_compatible(config)
    for name in ("alibi=False", "qk_ln=True", "no_bias=False", "logit_scale=2.0"):
        assert name in str(info.value)


def test_from_hf_model_refuses_settings_transformers_ignores():
    theirs = _hf_model(attn=dict(alibi_bias_max=4))  # transformers still uses 8
    with pytest.raises(ValueError, match="alibi_bias_max=4"):
        hf.from_hf_model(theirs)
    ours = hf.from_hf_model(theirs, alibi_bias_max=8)  # stating what transformers computes
    _assert_same_logits(ours, theirs)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_existing_out_dir_is_not_clobbered(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    ours = _ours()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        hf.export_hf(ours, None, out)
    assert os.listdir(out) == ["keep.txt"] and sorted(os.listdir(tmp_path)) == ["out"]
    hf.export_hf(torch.compile(ours), None, out, overwrite=True)  # a compile wrapper is unwrapped
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["out"]
    (tmp_path / "empty").mkdir()
    hf.export_hf(ours, None, tmp_path / "empty")  # an empty directory is fine


def test_interrupted_export_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    import safetensors.torch

    real, calls = safetensors.torch.save_file, []

    def failing_save(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="simulated"):
        hf.export_hf(_ours(), None, tmp_path / "out", max_shard_size="40KB")
    assert len(calls) == 2
    assert os.listdir(tmp_path) == []  # neither out_dir nor the partial directory


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda sd: sd.pop("transformer.blocks.1.ffn.up_proj.weight"),
            "missing keys.*blocks.1.ffn.up_proj",
        ),
        (
            lambda sd: sd.__setitem__("transformer.extra.weight", torch.zeros(2)),
            "unexpected keys.*transformer.extra.weight",
        ),
        (
            lambda sd: sd.__setitem__("transformer.norm_f.weight", torch.ones(95)),
            r"transformer.norm_f.weight: \(95,\), expected \(96,\)",
        ),
    ],
)
def test_bad_state_dicts_raise_naming_the_key(mutate, message):
    ours = _ours()
    sd = dict(ours.state_dict())
    mutate(sd)
    with pytest.raises(ValueError, match=message):
        hf.state_dict_to_hf(sd, ours.config)
    hf_sd = hf.state_dict_to_hf(dict(ours.state_dict()), ours.config)
    mutate(hf_sd)
    with pytest.raises(ValueError, match=message):
        hf.state_dict_from_hf(hf_sd, ours.config)


def test_tied_lm_head_that_differs_is_refused():
    theirs = _hf_model()
    sd = {k: v.clone() for k, v in theirs.state_dict().items()}
    sd["lm_head.weight"] += 1
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        hf.state_dict_from_hf(sd, theirs.config)


def test_import_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf.import_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mpt", "d_model": 64}))
    with pytest.raises(FileNotFoundError, match="no weights"):
        hf.import_hf(tmp_path)
    with pytest.raises(ValueError, match="prefix_lm"):
        hf.config_from_hf({"model_type": "mpt", "attn_config": {"prefix_lm": True}})
    with pytest.raises(ValueError, match="unknown MPTConfig keys: bogus"):
        hf.config_from_hf({"model_type": "mpt"}, bogus=1)


# -- optional dependency ---------------------------------------------------------------------------
def test_import_mpt_does_not_import_transformers():
    code = "import sys, mpt, mpt.hf; assert 'transformers' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_missing_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'mpt\[hf\]'"):
        hf.config_to_hf(MPTConfig(**SMALL, n_heads=4))


# -- FSDP2: DTensor parameters gathered per shard, rank 0 writes ----------------------------------
def _export_worker(rank: int, world: int, out: str, seed: int) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    model = _ours(seed=seed)
    for block in model.blocks():
        fully_shard(block)
    fully_shard(model)
    assert isinstance(model.transformer.wte.weight, DTensor)
    hf.export_hf(model, None, out, max_shard_size="40KB")


@pytest.mark.distributed
def test_export_of_fsdp2_sharded_model(tmp_path, run_ranks):
    out = tmp_path / "fsdp"
    run_ranks(_export_worker, str(out), 11)
    assert sorted(os.listdir(tmp_path)) == ["fsdp", "ranks"]
    back = hf.import_hf(out)
    expected = _ours(seed=11).state_dict()
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
