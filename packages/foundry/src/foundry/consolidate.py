"""A single-file consolidated checkpoint: the model weights of a sharded foundry checkpoint (FSDP2,
torch.distributed.checkpoint) in one safetensors file, written one tensor at a time.

    write_consolidated("runs/demo/ep0-ba300", "demo.safetensors")   # or the save folder: newest
    model, header = load_consolidated("demo.safetensors")           # mpt.MPTForCausalLM, eval mode

The file is plain safetensors (an 8-byte little-endian header length, a JSON header of names,
dtypes, shapes and byte offsets, then the raw tensor bytes), readable by `safetensors.torch`.
Tensor names are `mpt.MPTForCausalLM`'s state-dict keys (no tied LM head). `__metadata__` says
what it is, so that a file can be loaded without anything beside it:

    format "pt"; foundry_format "foundry-consolidated"; foundry_format_version "1";
    mpt_config (MPTConfig as JSON); tokenizer (the run's, "" when unknown); source (the checkpoint)

Bounded memory: DCP's `.metadata` gives every tensor's name, shape and dtype, so the header is
written first; then each tensor is read alone (`dcp.load` of a one-entry state dict reads only
that tensor's byte ranges from every rank's shard and assembles them), written, and dropped. The
peak is one tensor (the embedding, usually), never the model, and the optimizer state in the
checkpoint is never read. The manifest's content hashes of the shards are checked first, in one
streaming pass (composer-lite's `hash_file`, 8 MiB at a time), since the per-tensor reads do not
see whole files. Loading a file holds one copy of the weights (`safetensors.torch.load_file`,
assigned into a meta-device model: no second copy).
"""

from __future__ import annotations

import functools
import json
import os
import struct
import sys
from dataclasses import dataclass
from typing import Any

import torch

from mpt import MPTConfig, MPTForCausalLM

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ConsolidatedHeader",
    "load_consolidated",
    "read_header",
    "write_consolidated",
]

FORMAT = "foundry-consolidated"
FORMAT_VERSION = "1"
_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_MODEL_KEY_PREFIXES = ("model.model.", "model.")  # DCP key of MPTTrainable's / of a bare model


@dataclass(frozen=True, kw_only=True)
class ConsolidatedHeader:
    """What a consolidated file says about itself (its `__metadata__`)."""

    path: str
    config: MPTConfig
    tokenizer: str | None
    source: str


def read_header(path: str) -> ConsolidatedHeader:
    """The metadata of a consolidated file, without reading its tensors; raises naming the file
    when it is not one (or of a version this foundry does not read)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as file:
            meta = file.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for a bad header
        raise ValueError(f"{path}: not a safetensors file ({err})") from None
    if meta.get("foundry_format") != FORMAT:
        raise ValueError(
            f"{path}: a safetensors file, but not a foundry consolidated checkpoint (its metadata"
            f" has foundry_format={meta.get('foundry_format')!r}, expected {FORMAT!r}); for a"
            " Hugging Face model give its directory"
        )
    if meta.get("foundry_format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: foundry_format_version {meta.get('foundry_format_version')!r}; this foundry"
            f" reads version {FORMAT_VERSION}: use the foundry that wrote it"
        )
    return ConsolidatedHeader(
        path=path,
        config=MPTConfig.from_dict(json.loads(meta["mpt_config"])),
        tokenizer=meta.get("tokenizer") or None,
        source=meta.get("source", ""),
    )


def load_consolidated(
    path: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    attn_impl: str | None = None,
) -> tuple[MPTForCausalLM, ConsolidatedHeader]:
    """(the model in eval mode, the file's header); `attn_impl` overrides the saved backend."""
    from safetensors.torch import load_file

    header = read_header(path)
    config = header.config if attn_impl is None else header.config.replace(attn_impl=attn_impl)
    state = load_file(path, device=str(torch.device(device)))
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    expected = set(MPTForCausalLM(config, device="meta").state_dict())
    if set(state) != expected:
        raise ValueError(
            f"{path}: its tensors do not fit its mpt_config: missing"
            f" {sorted(expected - set(state))}, unexpected {sorted(set(state) - expected)}"
        )
    model = MPTForCausalLM(config, device="meta")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval(), header


# -- writing --------------------------------------------------------------------------------------
def _checkpoint_of(path: str) -> tuple[str, Any]:
    """(the local checkpoint, the run's TrainCommand) of a save folder or a checkpoint in it."""
    import yaml

    from composer_lite.checkpoint import CheckpointManager
    from foundry.checkpoints import save_folder_of
    from foundry.schema import TrainCommand
    from foundry.train import saved_config
    from foundry.validate import build
    from streaming.storage import is_remote

    if is_remote(path):
        raise ValueError(
            f"{path}: consolidating reads a local checkpoint; download it first (or convert it"
            " to=hf, which reads object stores)"
        )
    folder, checkpoint = save_folder_of(path)
    cfg = build(TrainCommand, yaml.safe_load(saved_config(folder)), what=f"{folder}'s config")
    checkpoint = checkpoint or CheckpointManager(folder).latest()
    if checkpoint is None:
        raise FileNotFoundError(f"{folder} holds no complete checkpoint yet")
    return checkpoint, cfg


def _check_hashes(checkpoint: str) -> Any:
    """The manifest of a complete checkpoint, its shard files checked against their hashes."""
    from composer_lite.checkpoint import CheckpointManager, CorruptCheckpointError
    from composer_lite.checkpoint.format import STATE_DIR
    from composer_lite.checkpoint.verify import hash_file

    manifest = CheckpointManager(os.path.dirname(checkpoint)).inspect(checkpoint)
    bad = []
    for relative, expected in sorted(manifest.hashes.items()):
        if relative.startswith(STATE_DIR + "/"):
            got = hash_file(os.path.join(checkpoint, *relative.split("/")))
            if got != expected:
                bad.append(f"{relative}: recorded {expected}, read {got}")
    if bad:
        raise CorruptCheckpointError(
            f"checkpoint {checkpoint} is corrupt (its bytes changed after the save): "
            + "; ".join(bad)
        )
    return manifest


def _model_entries(metadata: Any, config: MPTConfig, where: str) -> dict[str, tuple[str, Any]]:
    """{model key: (DCP key, its TensorStorageMetadata)} for every weight of the model."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    expected = list(MPTForCausalLM(config, device="meta").state_dict())
    saved = metadata.state_dict_metadata
    prefix = max(_MODEL_KEY_PREFIXES, key=lambda p: sum(p + k in saved for k in expected))
    found = {k: prefix + k for k in expected if prefix + k in saved}
    missing = [k for k in expected if k not in found]
    if missing:
        raise ValueError(
            f"checkpoint {where} does not hold the weights its config describes: missing"
            f" {missing[:8]}{' ...' if len(missing) > 8 else ''}"
        )
    entries = {k: (dcp_key, saved[dcp_key]) for k, dcp_key in found.items()}
    odd = [k for k, (_, entry) in entries.items() if not isinstance(entry, TensorStorageMetadata)]
    if odd:
        raise ValueError(f"checkpoint {where}: {odd} are not tensors")
    return entries


def _header_bytes(
    entries: dict[str, tuple[str, Any]], dtype: torch.dtype | None, metadata: dict[str, str]
) -> bytes:
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, (_, entry) in entries.items():
        kind = dtype or entry.properties.dtype
        if kind not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{name}: dtype {kind} has no safetensors name")
        size = tuple(entry.size)
        nbytes = kind.itemsize * int(torch.Size(size).numel())
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[kind],
            "shape": list(size),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    return blob + b" " * (-len(blob) % 8)  # the data starts 8-byte aligned


def _write_tensors(
    tmp: str,
    *,
    header: bytes,
    entries: dict[str, tuple[str, Any]],
    state_dir: str,
    dtype: torch.dtype | None,
) -> None:
    import torch.distributed.checkpoint as dcp

    from composer_lite.checkpoint.collective import single_process_quiet

    with open(tmp, "wb") as file:
        file.write(struct.pack("<Q", len(header)))
        file.write(header)
        for dcp_key, entry in entries.values():
            tensor = torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
            reader = dcp.FileSystemReader(state_dir)
            with single_process_quiet():
                dcp.load({dcp_key: tensor}, storage_reader=reader, no_dist=True)
            tensor = tensor.to(dtype or tensor.dtype).contiguous()
            file.write(tensor.reshape(-1).view(torch.uint8).numpy())
            del tensor


def write_consolidated(
    path: str, out: str, *, dtype: torch.dtype | None = None, overwrite: bool = False
) -> str:
    """Write the model weights of checkpoint `path` (a save folder: its newest) to the single
    safetensors file `out`, one tensor at a time; `dtype` casts them. Atomic: written beside
    `out` under a temporary name and renamed; an existing `out` is replaced only with
    `overwrite`. Returns `out`."""
    import torch.distributed.checkpoint as dcp

    from composer_lite.checkpoint.format import STATE_DIR
    from streaming.storage import atomic_write

    if sys.byteorder != "little":  # safetensors stores little-endian bytes
        raise RuntimeError("writing safetensors needs a little-endian machine")
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"out={out} exists; pass overwrite=true to replace it")
    checkpoint, cfg = _checkpoint_of(path)
    _check_hashes(checkpoint)
    state_dir = os.path.join(checkpoint, STATE_DIR)
    entries = _model_entries(dcp.FileSystemReader(state_dir).read_metadata(), cfg.model, checkpoint)
    meta = {
        "format": "pt",
        "foundry_format": FORMAT,
        "foundry_format_version": FORMAT_VERSION,
        "mpt_config": json.dumps(cfg.model.to_dict()),
        "tokenizer": cfg.tokenizer or "",
        "source": checkpoint,
    }
    header = _header_bytes(entries, dtype, meta)
    atomic_write(
        out,
        functools.partial(
            _write_tensors, header=header, entries=entries, state_dir=state_dir, dtype=dtype
        ),
    )
    return out
