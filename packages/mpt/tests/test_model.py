"""MPTConfig, presets, MPTForCausalLM: shapes, masks, KV cache, init, loss and bad input."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from mpt import PRESETS, MPTConfig, MPTForCausalLM, alibi_slopes, causal_lm_loss, preset
from mpt.norm import LPLayerNorm

# -- config and presets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"), [("mpt_7b", 6_649_286_656), ("mpt_30b", 29_957_200_896)]
)
def test_released_sizes_have_their_exact_parameter_counts(name, expected):
    model = MPTForCausalLM(preset(name), device="meta")
    assert sum(p.numel() for p in model.parameters()) == expected
    assert preset(name).num_params() == expected


def test_every_preset_builds_on_meta_and_counts_match():
    for name in PRESETS:
        config = preset(name)
        model = MPTForCausalLM(config, device="meta")
        assert sum(p.numel() for p in model.parameters()) == config.num_params(), name
        assert len(model.blocks()) == config.n_layers
    assert preset("mpt_30b").head_dim == 112 and preset("mpt_30b").max_seq_len == 8192


def test_config_errors_name_the_values():
    with pytest.raises(ValueError, match="d_model 100 is not divisible by n_heads 12"):
        MPTConfig(d_model=100, n_heads=12)
    with pytest.raises(ValueError, match="kv_n_heads 5 must be a positive divisor of n_heads 12"):
        MPTConfig(kv_n_heads=5)
    with pytest.raises(ValueError, match="unknown MPTConfig keys: bogus, d_modle"):
        MPTConfig.from_dict({"d_modle": 8, "bogus": 1})
    with pytest.raises(ValueError, match="unknown MPT preset 'mpt_2b'"):
        preset("mpt_2b")
    with pytest.raises(ValueError, match="norm_type 'rmsnorm'"):
        MPTConfig(norm_type="rmsnorm")
    with pytest.raises(
        ValueError, match="attn_skip_bits must be None, a number >= 0 or 'rounding'"
    ):
        MPTConfig(attn_skip_bits="fast")
    with pytest.raises(ValueError, match="attn_skip_bits"):
        MPTConfig(attn_skip_bits=-1)
    with pytest.raises(ValueError, match="softmax_scale must be positive or None, got -0.5"):
        MPTConfig(softmax_scale=-0.5)
    with pytest.raises(ValueError, match="layer_norm_epsilon must be positive, got 0"):
        MPTConfig(layer_norm_epsilon=0)


def test_flops_per_token_is_llm_foundrys_definition():
    config = preset("mpt_1b")
    n = config.num_params()
    assert config.flops_per_token(2048) == 6 * n + 12 * 24 * 2048 * 2048


def test_alibi_slopes_for_power_of_two_and_other_head_counts():
    assert torch.equal(alibi_slopes(8), 2.0 ** -torch.arange(1, 9, dtype=torch.float32))
    # 12 heads: the 16-head slopes 2^(-k/2), odd positions first then even ones, first 12 kept
    pow16 = 2.0 ** (-torch.arange(1, 17, dtype=torch.float32) / 2)
    expected = torch.cat([pow16[1::2], pow16[::2]])[:12]
    assert torch.equal(alibi_slopes(12), expected)
    assert torch.allclose(
        alibi_slopes(4, alibi_bias_max=16), 2.0 ** torch.tensor([-4.0, -8, -12, -16])
    )


# -- forward ------------------------------------------------------------------------------------


def test_packed_documents_do_not_see_each_other(tiny_mpt):
    model = tiny_mpt()
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(0, 101, (n,), generator=g) for n in (5, 9, 3)]
    packed = torch.cat(docs)[None]
    seq_id = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    logits = model(packed, sequence_id=seq_id).logits[0]
    start = 0
    for doc in docs:
        alone = model(doc[None]).logits[0]
        torch.testing.assert_close(logits[start : start + len(doc)], alone, rtol=1e-5, atol=1e-5)
        start += len(doc)


def test_left_padding_is_invisible(tiny_mpt):
    model = tiny_mpt()
    prompt = torch.randint(0, 101, (1, 6))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    out = model(padded, attention_mask=mask).logits[:, 3:]
    torch.testing.assert_close(out, model(prompt).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"kv_n_heads": 2}, {"kv_n_heads": 1, "qk_ln": True}])
def test_kv_cache_steps_equal_the_full_forward(tiny_mpt, overrides):
    model = tiny_mpt(**overrides)
    ids = torch.randint(0, 101, (2, 12))
    full = model(ids).logits
    cache = model.new_cache(2, 12)
    parts = [model(ids[:, :7], past_key_values=cache).logits]
    for t in range(7, 12):
        parts.append(model(ids[:, t : t + 1], past_key_values=cache).logits)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
    keys = cache.keys[1][:, :12].float()  # the decode kernel's ALiBi-skip bound, kept as it grows
    torch.testing.assert_close(cache.key_norm_max[1], keys.norm(dim=-1).amax(dim=1))
    with pytest.raises(ValueError, match="KV cache holds 12 positions; 12 are filled and 1 more"):
        model(ids[:, :1], past_key_values=cache)


def test_backends_give_the_same_logits_and_gradients(tiny_mpt):
    ids = torch.randint(0, 101, (2, 16))
    seq = torch.tensor([[0] * 6 + [1] * 10, [0] * 16])
    results = {}
    for impl in ("torch", "sdpa"):
        model = tiny_mpt(attn_impl=impl, kv_n_heads=2).train()
        out = model(ids, sequence_id=seq, labels=ids)
        out.loss.backward()
        results[impl] = (out.logits.detach(), model.transformer.blocks[0].attn.Wqkv.weight.grad)
    torch.testing.assert_close(results["sdpa"][0], results["torch"][0], rtol=1e-5, atol=1e-5)
    # gradients: fp32 sums in another order, compared in the norm (elements near 0 vary more)
    grad_err = (results["sdpa"][1] - results["torch"][1]).norm() / results["torch"][1].norm()
    assert float(grad_err) < 1e-5
    with torch.no_grad():  # FlexAttention has no backward on CPU; forward only here
        flex = tiny_mpt(attn_impl="flex", kv_n_heads=2, attn_fallback=None)(ids, sequence_id=seq)
    torch.testing.assert_close(flex.logits, results["torch"][0], rtol=1e-5, atol=1e-5)


def test_fallback_is_logged_once_and_alibi_is_kept(tiny_mpt, caplog, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = tiny_mpt(attn_impl="triton", attn_fallback="torch")
    reference = tiny_mpt(attn_impl="torch")
    ids = torch.randint(0, 101, (1, 8))
    with caplog.at_level(logging.WARNING, logger="mpt.attention"):
        out = model(ids).logits
        model(ids)
        model.generate(ids, max_new_tokens=2)  # other cases (KV cache), the same reason
        with torch.no_grad():
            model(ids)
    assert len(caplog.records) == 1 and "'triton'" in caplog.records[0].getMessage()
    torch.testing.assert_close(out, reference(ids).logits)
    strict = tiny_mpt(attn_impl="triton", attn_fallback=None)
    with pytest.raises(ValueError, match="attention backend 'triton' cannot serve"):
        strict(ids)


def test_loss_counts_only_labelled_tokens(tiny_mpt):
    model = tiny_mpt()
    ids = torch.randint(0, 101, (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt: no loss on predicting tokens 1..3
    out = model(ids, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, 101)
    targets = labels[:, 1:].reshape(-1)
    keep = targets != -100
    expected = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(causal_lm_loss(out.logits, labels), expected)


def test_learned_positions_and_untied_head(tiny_mpt):
    model = tiny_mpt(learned_pos_emb=True, tie_word_embeddings=False, alibi=False)
    names = dict(model.named_parameters())
    assert "transformer.wpe.weight" in names and "lm_head.weight" in names
    ids = torch.randint(0, 101, (1, 64))
    assert model(ids).logits.shape == (1, 64, 101)
    with pytest.raises(ValueError, match="sequence length 65 exceeds max_seq_len 64"):
        model(torch.randint(0, 101, (1, 65)))


def test_learned_positions_with_alibi_stop_at_max_seq_len(tiny_mpt):
    model = tiny_mpt(learned_pos_emb=True)  # ALiBi on, learned positions too
    ids = torch.randint(0, 101, (1, 65))
    for mask in (None, torch.ones_like(ids)):  # was: IndexError / positions silently clamped
        with pytest.raises(ValueError, match="65 exceeds max_seq_len 64; .* no learned positions"):
            model(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="prompt length 60 \\+ max_new_tokens 6 needs 65"):
        model.generate(ids[:, :60], max_new_tokens=6)  # refused before any work
    assert model.generate(ids[:, :60], max_new_tokens=5).shape == (1, 65)


@pytest.mark.parametrize("overrides", [{}, {"learned_pos_emb": True, "alibi": False}])
def test_packed_prefill_then_decode_equals_the_full_forward(tiny_mpt, overrides):
    """A cache prefilled with packed documents: the prefill's logits equal the cacheless forward,
    and decode steps without sequence ids continue each row's last document."""
    model = tiny_mpt(**overrides)
    ids = torch.randint(0, 101, (2, 10))
    seq = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 2, 2, 2, 2, 2]])
    full = model(ids, sequence_id=seq).logits
    cache = model.new_cache(2, 10)
    parts = [model(ids[:, :6], sequence_id=seq[:, :6], past_key_values=cache).logits]
    for t in range(6, 10):
        parts.append(model(ids[:, t : t + 1], past_key_values=cache).logits)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_document_positions_restart_per_document_and_skip_padding():
    from mpt.cache import document_positions

    ids = torch.tensor([[-1, -1, 0, 0, 1, 1, 1], [3, 3, -1, 3, 4, -1, -1], [5, 5, 5, 6, 6, 7, 7]])
    last_id = torch.tensor([-1, -1, 5])  # row 2 continues a cached document 5 at position 4
    positions = torch.tensor([0, 0, 4])
    pos, next_pos, next_id = document_positions(ids, last_id, positions)
    real = ids >= 0
    assert pos[real].tolist() == [0, 1, 0, 1, 2] + [0, 1, 2, 0] + [4, 5, 6, 0, 1, 0, 1]
    assert next_pos.tolist() == [3, 1, 2] and next_id.tolist() == [1, 4, 7]


def test_blocks_training_with_a_frozen_embedding_get_a_backend_with_a_backward(tiny_mpt, caplog):
    model = tiny_mpt(attn_impl="flex").train()  # FlexAttention has no backward on CPU
    model.transformer.wte.weight.requires_grad_(False)
    ids = torch.randint(0, 101, (1, 8))
    with caplog.at_level(logging.WARNING, logger="mpt.attention"):
        model(ids, labels=ids).loss.backward()  # was: NotImplementedError from FlexAttention
    assert "has no backward pass on cpu; using 'torch'" in caplog.text
    assert model.transformer.blocks[0].attn.Wqkv.weight.grad is not None


def test_alibi_runs_past_max_seq_len_only_when_the_config_says_so(tiny_mpt):
    ids = torch.randint(0, 101, (1, 80))
    with pytest.raises(ValueError, match="80 exceeds max_seq_len 64; ALiBi extrapolates: set alib"):
        tiny_mpt()(ids)  # was accepted silently
    with pytest.raises(ValueError, match="needs 80 exceeds max_seq_len 64; ALiBi extrapolates"):
        tiny_mpt().generate(ids[:, :70], max_new_tokens=11)  # refused before any work
    model = tiny_mpt(alibi_extrapolate=True)
    logits = model(ids).logits
    assert logits.shape == (1, 80, 101)  # causal: the first 64 positions are the short forward's
    torch.testing.assert_close(logits[:, :64], model(ids[:, :64]).logits)
    assert model.generate(ids[:, :70], max_new_tokens=11).shape == (1, 81)
    with pytest.raises(ValueError, match="alibi_extrapolate=True needs alibi=True and learned"):
        MPTConfig(alibi_extrapolate=True, learned_pos_emb=True)


def test_attention_backend_names_are_checked_in_the_config():
    with pytest.raises(ValueError, match="attn_impl 'trition' is not an attention backend"):
        MPTConfig(attn_impl="trition")  # was accepted until the first forward
    with pytest.raises(ValueError, match="attn_fallback 'math' is not an attention backend"):
        MPTConfig(attn_fallback="math")
    assert MPTConfig(attn_impl="flash", attn_fallback=None).attn_fallback is None


def test_labels_outside_the_vocabulary_are_named(tiny_mpt):
    model, ids = tiny_mpt(), torch.randint(0, 101, (2, 8))
    labels = ids.clone()
    labels[1, 3] = 101  # was an IndexError deep in cross_entropy (a device assert on a GPU)
    for return_logits in (True, False):
        with pytest.raises(ValueError, match=r"1 label\(s\) outside .* labels\[1, 3\] = 101"):
            model(ids, labels=labels, return_logits=return_logits)
    labels[1, 3] = -100  # the ignore index is fine
    assert model(ids, labels=labels).loss is not None
    with pytest.raises(ValueError, match="labels must be an integer tensor shaped like"):
        model(ids, labels=labels[:, :4])


def test_token_ids_outside_the_vocabulary_are_named(tiny_mpt):
    model = tiny_mpt()
    with pytest.raises(ValueError, match=r"token id 101 is outside the vocabulary \[0, 101\)"):
        model(torch.tensor([[1, 101]]))
    with pytest.raises(ValueError, match="token id -3 is outside"):
        model(torch.tensor([[-3, 1]]))
    with pytest.raises(ValueError, match="input_ids must be an integer tensor"):
        model(torch.zeros(1, 3))


def test_embedding_fraction_scales_the_embedding_gradient(tiny_mpt):
    ids = torch.randint(0, 101, (2, 8))
    grads = []
    for frac in (1.0, 0.25):
        model = tiny_mpt(embedding_fraction=frac, tie_word_embeddings=False)
        model(ids, labels=ids).loss.backward()
        grads.append(model.transformer.wte.weight.grad)
    assert float((grads[1] - grads[0] * 0.25).norm() / grads[1].norm()) < 1e-5


def test_logit_scale(tiny_mpt):
    ids = torch.randint(0, 101, (1, 5))
    plain = tiny_mpt()(ids).logits
    scaled = tiny_mpt(logit_scale="inv_sqrt_d_model")(ids).logits
    torch.testing.assert_close(scaled, plain / 8)


# -- init and materialization ----------------------------------------------------------------


def test_meta_model_materializes_with_mpt_init():
    config = MPTConfig(d_model=256, n_heads=4, n_layers=8, vocab_size=1000)
    model = MPTForCausalLM(config, device="meta")
    assert all(p.is_meta for p in model.parameters())
    model.materialize("cpu", seed=3)
    assert not any(p.is_meta for p in model.parameters())
    std = math.sqrt(2 / 256)  # kaiming normal, fan-in 256, relu gain
    block = model.transformer.blocks[0]
    assert abs(block.attn.Wqkv.weight.std().item() / std - 1) < 0.05
    assert abs(block.ffn.down_proj.weight.std().item() / (math.sqrt(2 / 1024) / 4) - 1) < 0.05
    assert abs(block.attn.out_proj.weight.std().item() / (std / 4) - 1) < 0.05  # / sqrt(2 * 8)
    assert torch.equal(block.norm_1.weight, torch.ones(256))
    again = MPTForCausalLM(config, device="meta").materialize("cpu", seed=3)
    assert torch.equal(again.transformer.wte.weight, model.transformer.wte.weight)


def test_low_precision_layernorm_runs_in_the_autocast_dtype():
    norm = LPLayerNorm(32, bias=False)
    x = torch.randn(4, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
    assert out.dtype == torch.bfloat16
    expected = F.layer_norm(x.bfloat16(), (32,), norm.weight.bfloat16(), None, norm.eps)
    assert torch.equal(out, expected)
    assert norm(x).dtype == torch.float32


@pytest.mark.parametrize("return_logits", [True, False])
def test_whole_model_compiles_into_one_graph(tiny_mpt, return_logits):
    model = tiny_mpt(attn_impl="sdpa")
    ids = torch.randint(0, 101, (2, 16))
    expected = model(ids, labels=ids, return_logits=return_logits)
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: no graph break
    out = compiled(ids, labels=ids, return_logits=return_logits)
    torch.testing.assert_close(out.loss, expected.loss, rtol=1e-5, atol=1e-6)
    if return_logits:
        torch.testing.assert_close(out.logits, expected.logits, rtol=1e-5, atol=1e-5)
