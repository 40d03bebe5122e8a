"""Hugging Face parity: convert MPT configs and weights to and from transformers' `MptForCausalLM`,
export a model directory that `MptForCausalLM.from_pretrained` loads offline, and import one back.

transformers and safetensors are optional (`pip install 'mpt[hf]'`): they are imported inside the
functions that use them, so `import mpt` and `import mpt.hf` never import them.

What transformers' MPT implements (read from transformers 5.24's `modeling_mpt.py`):

- ALiBi always, built as `build_mpt_alibi_tensor(n_heads, max_seq_len)` with alibi_bias_max fixed at
  8: `attn_config.alibi` and `attn_config.alibi_bias_max` are ignored. The slopes (interleaved for
  head counts that are not a power of two) equal ours; its bias is ours plus a constant per row.
  The table has `max_seq_len` columns, so it cannot run longer sequences (ours can).
- No position table (`wpe`), whatever `learned_pos_emb` says (its default is True, and MosaicML's
  released configs say True next to ALiBi): an exported config says False.
- `Wqkv` is Linear(d, 3d) and `up_proj` Linear(d, 4d), both without bias: no GQA/MQA (`attn_type`
  is ignored), `expansion_ratio` is ignored (4), `no_bias` is ignored (no biases anywhere).
- Plain `nn.LayerNorm` with its bias removed, `layer_norm_epsilon` honoured; `norm_type` is ignored
  (no low-precision LayerNorm: equal to ours in fp32, runs in fp32 under autocast).
- No q/k LayerNorm (`qk_ln` ignored); `logit_scale` ignored; `embedding_fraction` ignored (it
  changes only gradients, never the forward, so it is exported as recorded).
- Honoured: `clip_qkv` (clamp of the fused qkv; `if clip_qkv:`, so 0 means off), `softmax_scale`
  (default 1/sqrt(head_dim)), `tie_word_embeddings` (False gives an untied `lm_head`).
- Dropout differs (training only): `attn_pdrop` drops attention weights and also both residual
  branches; `resid_pdrop` and `emb_pdrop` are unused. Its strict config declares `attn_pdrop` an
  int, so a fractional value fails to load: it is exported as 0 when transformers rejects it.
- `attn_impl`, `prefix_lm` and `attn_uses_sequence_id` are ignored (always eager causal attention).
- Its state dict has no buffers and no unused keys; `lm_head.weight` is tied to
  `transformer.wte.weight` (and left out of saved files) when `tie_word_embeddings`.

Exporting a config outside that set raises one ValueError naming every offending setting, instead
of writing a directory that loads into a different function. Our names match transformers' except
the tied LM head, which our model does not store.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from mpt.config import MPTConfig
from mpt.model import MPTForCausalLM

__all__ = [
    "check_hf_compatible",
    "config_from_hf",
    "config_to_hf",
    "export_hf",
    "from_hf_model",
    "import_hf",
    "state_dict_from_hf",
    "state_dict_to_hf",
    "to_hf_model",
]

log = logging.getLogger("mpt.hf")

WTE, LM_HEAD, WPE = "transformer.wte.weight", "lm_head.weight", "transformer.wpe.weight"
_HINT = "pip install 'mpt[hf]'"

# transformers' MptConfig / MptAttentionConfig defaults, for keys a config.json leaves out.
_HF_DEFAULTS = dict(
    d_model=2048,
    n_heads=16,
    n_layers=24,
    expansion_ratio=4,
    max_seq_len=2048,
    vocab_size=50368,
    resid_pdrop=0.0,
    emb_pdrop=0.0,
    layer_norm_epsilon=1e-5,
    learned_pos_emb=True,
    logit_scale=None,
    no_bias=True,
    embedding_fraction=1.0,
    norm_type="low_precision_layernorm",
    tie_word_embeddings=True,
)
_HF_ATTN_DEFAULTS = dict(
    attn_type="multihead_attention",
    attn_pdrop=0.0,
    clip_qkv=None,
    softmax_scale=None,
    prefix_lm=False,
    qk_ln=False,
    alibi=True,
    alibi_bias_max=8,
)


def _require(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise ImportError(f"mpt.hf needs {module.split('.')[0]}: {_HINT}") from e


# -- configs -------------------------------------------------------------------------------------
def _incompatibilities(config: MPTConfig) -> list[str]:
    c = config
    checks = [
        (c.alibi, "alibi=False (it always applies ALiBi)"),
        (c.alibi_bias_max == 8, f"alibi_bias_max={c.alibi_bias_max!r} (it fixes 8)"),
        (c.ffn_hidden_size == 4 * c.d_model, f"expansion_ratio={c.expansion_ratio!r} (it fixes 4)"),
        (c.no_bias, "no_bias=False (it has no biases)"),
        (not c.qk_ln, "qk_ln=True (it has no q/k LayerNorm)"),
        (not c.learned_pos_emb, "learned_pos_emb=True (it has no position table)"),
        (c.n_kv_heads == c.n_heads, f"kv_n_heads={c.kv_n_heads!r} (it has no GQA/MQA)"),
        (c.resolved_logit_scale() in (None, 1.0), f"logit_scale={c.logit_scale!r} (it ignores it)"),
    ]
    return [message for ok, message in checks if not ok]


def check_hf_compatible(config: MPTConfig) -> None:
    """Raise a ValueError naming every setting transformers' `MptForCausalLM` cannot reproduce."""
    if problems := _incompatibilities(config):
        raise ValueError(
            "transformers' MptForCausalLM cannot compute this MPT config: " + "; ".join(problems)
        )


def config_to_hf(config: MPTConfig):
    """The `transformers.MptConfig` of `config` (validated with `check_hf_compatible`)."""
    check_hf_compatible(config)
    transformers = _require("transformers")
    c, opt = config, (lambda v: None if v is None else float(v))
    attn = dict(
        attn_type="multihead_attention",
        attn_impl="torch",
        clip_qkv=opt(c.clip_qkv),
        softmax_scale=opt(c.softmax_scale),
        qk_ln=False,
        alibi=True,
        alibi_bias_max=8,
    )
    fields = dict(
        d_model=c.d_model,
        n_heads=c.n_heads,
        n_layers=c.n_layers,
        expansion_ratio=4,
        max_seq_len=c.max_seq_len,
        vocab_size=c.vocab_size,
        resid_pdrop=float(c.resid_pdrop),
        emb_pdrop=float(c.emb_pdrop),
        layer_norm_epsilon=float(c.layer_norm_epsilon),
        learned_pos_emb=False,
        logit_scale=None,
        no_bias=True,
        embedding_fraction=float(c.embedding_fraction),
        norm_type=c.norm_type,
        tie_word_embeddings=c.tie_word_embeddings,
        architectures=["MptForCausalLM"],
    )
    pdrop = int(c.attn_pdrop) if float(c.attn_pdrop).is_integer() else float(c.attn_pdrop)
    try:
        return transformers.MptConfig(**fields, attn_config={**attn, "attn_pdrop": pdrop})
    except Exception as e:  # transformers 5.x: a strict config that declares attn_pdrop an int
        if "attn_pdrop" not in str(e):
            raise
        reason = str(e).splitlines()[-1].strip()
        log.warning(
            "transformers %s rejects attn_pdrop=%r (%s); exporting attn_pdrop=0 (dropout does not"
            " change inference)",
            transformers.__version__,
            c.attn_pdrop,
            reason,
        )
        return transformers.MptConfig(**fields, attn_config={**attn, "attn_pdrop": 0})


def _as_dict(cfg: Any) -> dict[str, Any]:
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    attn = d.get("attn_config") or {}
    d["attn_config"] = attn.to_dict() if hasattr(attn, "to_dict") else dict(attn)
    return d


def config_from_hf(hf_config, **overrides: Any) -> MPTConfig:
    """Our `MPTConfig` from a `transformers.MptConfig` or a config.json dict, plus `overrides`.

    Fields keep MPT's meaning (which our model implements in full, beyond what transformers' MPT
    does); `check_hf_compatible` tells whether transformers computes the same function. Exception:
    `learned_pos_emb` counts only without ALiBi (transformers has no table, and MosaicML's configs
    say True next to ALiBi); pass `learned_pos_emb=True` when the weights hold `transformer.wpe`.
    The attention backend and init settings are ours (defaults, or `overrides`), not the file's.
    """
    d = _as_dict(hf_config)
    if d.get("model_type", "mpt") != "mpt":
        raise ValueError(f"expected an MPT config (model_type 'mpt'), got {d['model_type']!r}")
    top = {k: d.get(k, v) for k, v in _HF_DEFAULTS.items()}
    attn = {k: d["attn_config"].get(k, v) for k, v in _HF_ATTN_DEFAULTS.items()}
    unsupported = [f"prefix_lm={attn['prefix_lm']!r}"] if attn["prefix_lm"] else []
    if d.get("rope") or d["attn_config"].get("rope"):
        unsupported.append("rope=True")
    ffn_type = (d.get("ffn_config") or {}).get("ffn_type", "mptmlp")
    if ffn_type != "mptmlp":
        unsupported.append(f"ffn_config.ffn_type={ffn_type!r}")
    kinds = {"multihead_attention": None, "multiquery_attention": 1}
    if attn["attn_type"] == "grouped_query_attention":
        kinds["grouped_query_attention"] = d["attn_config"].get("kv_n_heads")
    if attn["attn_type"] not in kinds:
        unsupported.append(f"attn_type={attn['attn_type']!r}")
    if unsupported:
        raise ValueError(
            "MPT config settings our model does not implement: " + "; ".join(unsupported)
        )
    fields = dict(
        top,
        learned_pos_emb=bool(top["learned_pos_emb"]) and not attn["alibi"],
        kv_n_heads=kinds[attn["attn_type"]],
        **{k: attn[k] for k in ("alibi", "alibi_bias_max", "qk_ln", "softmax_scale")},
        clip_qkv=attn["clip_qkv"] or None,  # transformers: `if clip_qkv:`, so 0 means off
        attn_pdrop=float(attn["attn_pdrop"]),
    )
    return MPTConfig.from_dict({**fields, **overrides})


# -- state dicts ---------------------------------------------------------------------------------
def _check_keys(sd: dict[str, Any], config: MPTConfig, what: str) -> None:
    """One ValueError listing every missing key, unexpected key and shape mismatch."""
    expected = {k: v.shape for k, v in MPTForCausalLM(config, device="meta").state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [
        f"{k}: {tuple(sd[k].shape)}, expected {tuple(s)}"
        for k, s in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(s)
    ]
    parts = [f"missing keys {missing}"] if missing else []
    parts += [f"unexpected keys {unexpected}"] if unexpected else []
    parts += [f"shape mismatches [{'; '.join(wrong)}]"] if wrong else []
    if parts:
        raise ValueError(f"{what} does not fit the MPT config: " + ", ".join(parts))


def state_dict_to_hf(sd: dict[str, torch.Tensor], config: MPTConfig) -> dict[str, torch.Tensor]:
    """transformers' names for our state dict (the same tensors, no copies): adds the tied LM head."""
    _check_keys(sd, config, "state dict")
    out = dict(sd)
    if config.tie_word_embeddings:
        out[LM_HEAD] = sd[WTE]
    return out


def state_dict_from_hf(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Our state dict from transformers' (same tensors): drops the tied LM head after checking it.

    `config` is our `MPTConfig`, a `transformers.MptConfig` or a config.json dict.
    """
    if not isinstance(config, MPTConfig):
        config = config_from_hf(config, learned_pos_emb=WPE in sd)
    out = dict(sd)
    if config.tie_word_embeddings and LM_HEAD in out:
        head, wte = out.pop(LM_HEAD), out.get(WTE)
        if wte is not None and not _same(head, wte):
            raise ValueError(f"{LM_HEAD} differs from {WTE}, but the config ties them")
    _check_keys(out, config, "Hugging Face state dict")
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.is_meta or b.is_meta or a.data_ptr() == b.data_ptr():
        return a.shape == b.shape
    return torch.equal(a, b.to(a.device, a.dtype))


# -- models --------------------------------------------------------------------------------------
def to_hf_model(model: MPTForCausalLM):
    """A `transformers.MptForCausalLM` with our model's weights (copied), dtype, device and mode."""
    transformers = _require("transformers")
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper
    hf_config = config_to_hf(model.config)
    weight = model.transformer.wte.weight
    hf = transformers.MptForCausalLM(hf_config).to(weight.device, weight.dtype)
    hf.load_state_dict(state_dict_to_hf(model.state_dict(), model.config), strict=True)
    return hf.train(model.training)


def _load_into_meta(config: MPTConfig, sd: dict[str, torch.Tensor]) -> MPTForCausalLM:
    model = MPTForCausalLM(config, device="meta")
    model.load_state_dict(sd, strict=True, assign=True)
    return model


def from_hf_model(hf_model, **overrides: Any) -> MPTForCausalLM:
    """Our model with a transformers `MptForCausalLM`'s weights (copied), dtype and device.

    `overrides` are `MPTConfig` fields (`attn_impl="triton"`, ...). Raises when the transformers
    config asks for something transformers' MPT does not compute (the result would be ambiguous).
    """
    config = config_from_hf(hf_model.config, **overrides)
    if problems := _incompatibilities(config):
        raise ValueError(
            "this transformers model's config states settings that transformers' MptForCausalLM"
            f" ignores, so its function is ambiguous: {'; '.join(problems)} (override them)"
        )
    tied = config.tie_word_embeddings  # then lm_head is wte itself: no second copy
    hf_sd = {
        k: v.detach().clone()
        for k, v in hf_model.state_dict().items()
        if not (tied and k == LM_HEAD)
    }
    model = _load_into_meta(config, state_dict_from_hf(hf_sd, config))
    return model.train(hf_model.training)


# -- export --------------------------------------------------------------------------------------
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _parse_size(size: int | str) -> int:
    if isinstance(size, int) and size > 0:
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", str(size), re.IGNORECASE)
    if isinstance(size, bool) or not m or float(m[1]) <= 0:
        raise ValueError(f"max_shard_size must be bytes or like '5GB' / '500MiB', got {size!r}")
    return int(float(m[1]) * _UNITS[(m[2] or "").upper()])


def _plan_shards(sd: dict[str, torch.Tensor], dtype, limit: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in sd.items():
        nbytes = t.numel() * (dtype or t.dtype).itemsize
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _host_tensor(t: torch.Tensor, dtype) -> torch.Tensor:
    """One full CPU tensor, ready for safetensors (gathered here if it is a DTensor)."""
    if hasattr(t, "full_tensor"):  # a DTensor: a collective, so every rank must come here
        t = t.full_tensor()
    if t.is_meta:
        raise ValueError("cannot export a tensor on the meta device; materialize the model first")
    t = t.detach().to("cpu", dtype or t.dtype)
    if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone(memory_format=torch.contiguous_format)  # a view into a larger storage
    return t


def _is_writer() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def export_hf(
    model_or_state_dict: MPTForCausalLM | dict[str, torch.Tensor],
    config: MPTConfig | None,
    out_dir: str | Path,
    *,
    max_shard_size: int | str = "5GB",
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a directory `transformers.MptForCausalLM.from_pretrained(out_dir)` loads offline.

    `config.json` plus `model.safetensors`, or `model-0000i-of-0000N.safetensors` shards with
    `model.safetensors.index.json`. Shards are gathered (`full_tensor()` for DTensors; call on
    every rank then, rank 0 writes), cast to `dtype` and written one at a time, so at most one
    shard is held besides the model. Everything is written to a hidden directory next to
    `out_dir` (config.json last) and renamed into place at the end; an existing non-empty
    `out_dir` is replaced only with `overwrite=True`. `config` defaults to the model's.
    """
    model_or_state_dict = getattr(model_or_state_dict, "_orig_mod", model_or_state_dict)  # compiled
    is_model = isinstance(model_or_state_dict, torch.nn.Module)
    config = config or (model_or_state_dict.config if is_model else None)
    if not isinstance(config, MPTConfig):
        raise ValueError(f"export_hf needs an MPTConfig (or a model that has one), got {config!r}")
    hf_config = config_to_hf(config)  # raises for settings transformers cannot reproduce
    save_file = _require("safetensors.torch").save_file
    sd = model_or_state_dict.state_dict() if is_model else dict(model_or_state_dict)
    sd = state_dict_to_hf(sd, config)
    if config.tie_word_embeddings:
        del sd[LM_HEAD]  # transformers re-ties it on load, and its files leave it out
    shards = _plan_shards(sd, dtype, _parse_size(max_shard_size))
    writer = _is_writer()

    out = Path(out_dir)
    if writer and out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace it")
    tmp = None
    if writer:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        if len(shards) == 1:
            names = ["model.safetensors"]
        weight_map, total = {}, 0
        for file, keys in zip(names, shards, strict=True):
            tensors = {k: _host_tensor(sd[k], dtype) for k in keys}
            total += sum(t.numel() * t.element_size() for t in tensors.values())
            if writer:
                save_file(tensors, str(tmp / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(keys, file))
            del tensors
        if not writer:
            return out
        if len(shards) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        dtypes = {(dtype or t.dtype) for t in sd.values()}
        if len(dtypes) == 1:
            hf_config.dtype = str(dtypes.pop()).removeprefix("torch.")
        hf_config.to_json_file(str(tmp / "config.json"))
        _move_into_place(tmp, out)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _move_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    elif out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.replaced-{tmp.name.rsplit('-', 1)[-1]}")
        out.rename(old)
    tmp.rename(out)
    if old is not None and old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    elif old is not None:
        old.unlink()


# -- import --------------------------------------------------------------------------------------
def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    files: list[str] = []
    for single in ("model.safetensors", "pytorch_model.bin"):  # safetensors first, as transformers
        if (index := path / f"{single}.index.json").exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (path / single).exists():
            files = [single]
        if files:
            break
    if not files:
        raise FileNotFoundError(
            f"no weights in {path}: expected model.safetensors(.index.json) or pytorch_model.bin"
        )
    sd: dict[str, torch.Tensor] = {}
    for file in files:
        if file.endswith(".safetensors"):
            part = _require("safetensors.torch").load_file(str(path / file))
        else:
            part = torch.load(path / file, map_location="cpu", weights_only=True, mmap=True)
        if clash := sorted(set(part) & set(sd)):
            raise ValueError(f"keys {clash} appear in more than one weight file of {path}")
        sd.update(part)
    return sd


def import_hf(
    path: str | Path, *, dtype: torch.dtype | None = None, **overrides: Any
) -> MPTForCausalLM:
    """Our model from a local Hugging Face MPT directory (config.json + safetensors or .bin).

    `overrides` are `MPTConfig` fields (`attn_impl="triton"`, ...); `dtype` casts the weights.
    Needs safetensors for .safetensors files, not transformers. Loads the weights once (no copy).
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; expected a Hugging Face MPT directory")
    sd = _read_weights(path)
    config = config_from_hf(
        json.loads((path / "config.json").read_text()),
        **{"learned_pos_emb": WPE in sd, **overrides},
    )
    sd = state_dict_from_hf(sd, config)
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    return _load_into_meta(config, sd).eval()
