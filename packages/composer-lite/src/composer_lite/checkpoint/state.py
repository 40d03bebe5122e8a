"""What a checkpoint holds, taken from and put back into live objects (no files or URLs here).

Model and optimizer state go through `torch.distributed.checkpoint.state_dict`, which gives
DTensor shards for an FSDP2 model and plain tensors otherwise, keyed by parameter names that do
not depend on the sharding, so DCP can reshard on load. The run objects are split into a
skeleton (pickled by rank 0) and their tensors (saved through DCP, so DTensors in them, such as
an EMA callback's shadow weights, are written by their owners); on load those tensors come back
whole, unsharded, on the CPU.
"""

from __future__ import annotations

import copy
import io
import pickle
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from composer_lite.checkpoint.collective import (
    on_all_ranks,
    on_all_ranks_local,
    single_process_quiet,
)
from composer_lite.checkpoint.format import CheckpointError, TensorRef
from composer_lite.checkpoint.verify import CheckedReader

__all__ = ["join_objects", "load_state", "save_state", "split_objects", "to_bytes"]


def split_objects(objects: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """(skeleton, tensors): every tensor inside dicts, lists and tuples replaced by a TensorRef."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = value.detach()
            return TensorRef(key)
        if isinstance(value, dict):
            out = copy.copy(value)  # keeps OrderedDict, defaultdict, ...
            for name, item in value.items():
                out[name] = walk(item)
            return out
        if isinstance(value, list):
            return [walk(item) for item in value]
        if isinstance(value, tuple):
            items = [walk(item) for item in value]
            return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
        return value

    return walk(objects), tensors


def join_objects(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `split_objects`."""
    if isinstance(skeleton, TensorRef):
        return tensors[skeleton.key]
    if isinstance(skeleton, dict):
        out = copy.copy(skeleton)
        for name, item in skeleton.items():
            out[name] = join_objects(item, tensors)
        return out
    if isinstance(skeleton, list):
        return [join_objects(item, tensors) for item in skeleton]
    if isinstance(skeleton, tuple):
        items = [join_objects(item, tensors) for item in skeleton]
        return type(skeleton)(*items) if hasattr(skeleton, "_fields") else tuple(items)
    return skeleton


def _refs(skeleton: Any) -> list[str]:
    """The keys of the TensorRefs in a skeleton, in order."""
    if isinstance(skeleton, TensorRef):
        return [skeleton.key]
    items = skeleton.values() if isinstance(skeleton, dict) else skeleton
    if isinstance(skeleton, dict | list | tuple):
        return [key for item in items for key in _refs(item)]
    return []


def to_bytes(value: Any, what: str) -> bytes:
    """`torch.save` into memory (objects.pt and the rank files are small)."""
    buffer = io.BytesIO()
    try:
        torch.save(value, buffer)
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        raise CheckpointError(
            f"cannot save the checkpoint's {what}: expected picklable values (classes importable "
            f"by module path), got {err}"
        ) from err
    return buffer.getvalue()


def save_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, objects: Any
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(DCP state dict, optimizer kind, the payload of objects.pt) for a collective save."""
    skeleton, tensors = split_objects(objects)
    payload: dict[str, Any] = {"objects": skeleton, "optimizer_param_groups": None}
    if optimizer is not None and optimizer.state:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        return {"model": model_sd, "optimizer": optim_sd, "objects": tensors}, "sharded", payload
    # An optimizer that has not stepped has no state to save; asking torch for its state dict
    # would take a zero step to create it (Adam's step count would then be off by one).
    if optimizer is not None:
        payload["optimizer_param_groups"] = [
            {key: value for key, value in group.items() if key != "params"}
            for group in optimizer.param_groups
        ]
    kind = "empty" if optimizer is not None else "none"
    return {"model": get_model_state_dict(model), "objects": tensors}, kind, payload


def load_state(
    reader: CheckedReader,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    optimizer_kind: str,
    payload: dict[str, Any],
    where: str,
) -> Any:
    """Load DCP state through `reader` into `model` and `optimizer` (collective); return the run
    objects. The files are checked as they are read: a mismatch on any rank raises
    `CorruptCheckpointError` on every rank."""
    if optimizer is not None and optimizer_kind == "none":
        raise CheckpointError(
            f"checkpoint {where} was saved without optimizer state, but an optimizer was given: "
            "pass optimizer=None to load only the model"
        )
    metadata = on_all_ranks_local("reading its metadata", reader.read_metadata)
    state: dict[str, Any] = {}
    dropped: list[str] = []
    if optimizer is not None and optimizer_kind == "sharded":
        state["model"], state["optimizer"] = get_state_dict(model, optimizer)
        dropped = _drop_unsaved_optimizer_state(state["optimizer"], metadata)
    else:
        state["model"] = get_model_state_dict(model)
    _check_model_keys(state["model"], metadata, where)
    state["objects"] = {
        key: _empty_like_saved(metadata, key, where) for key in _refs(payload["objects"])
    }
    try:
        with single_process_quiet():
            dcp.load(state, storage_reader=reader)
    except (Exception, CheckpointException) as err:  # DCP's exception is a BaseException
        on_all_ranks("checking its files", reader.verify)  # a corrupt file explains it best
        raise CheckpointError(f"cannot load the state of checkpoint {where}: {err}") from err
    on_all_ranks("checking its files", reader.verify)
    set_model_state_dict(model, state["model"])
    if "optimizer" in state:
        set_optimizer_state_dict(
            model, optimizer, state["optimizer"], options=StateDictOptions(strict=not dropped)
        )
        params = dict(model.named_parameters())
        for fqn in dropped:  # as in the saved run: no state until their first gradient
            optimizer.state.pop(params[fqn], None)
    elif optimizer is not None and optimizer_kind == "empty":
        _restore_fresh_optimizer(optimizer, payload["optimizer_param_groups"], where)
    return join_objects(payload["objects"], state["objects"])


def _drop_unsaved_optimizer_state(optim_sd: dict[str, Any], metadata: Metadata) -> list[str]:
    """Remove (and return) the parameters whose optimizer state the checkpoint lacks: those that
    had no gradient before it was saved (a frozen or unused part), which DCP's state-dict helper
    gave a fresh state to load into."""
    saved = metadata.state_dict_metadata
    dropped = [
        fqn
        for fqn, entries in optim_sd.get("state", {}).items()
        if not all(f"optimizer.state.{fqn}.{key}" in saved for key in entries)
    ]
    for fqn in dropped:
        del optim_sd["state"][fqn]
    return dropped


def _check_model_keys(model_sd: dict[str, Any], metadata: Metadata, where: str) -> None:
    saved = {
        key.removeprefix("model."): value
        for key, value in metadata.state_dict_metadata.items()
        if key.startswith("model.")
    }
    missing = sorted(set(model_sd) - set(saved))
    unexpected = sorted(set(saved) - set(model_sd))
    shapes = [
        f"{key}: {tuple(saved[key].size)} saved, {tuple(value.shape)} in the model"
        for key, value in model_sd.items()
        if key in saved
        and isinstance(value, torch.Tensor)
        and isinstance(saved[key], TensorStorageMetadata)
        and tuple(saved[key].size) != tuple(value.shape)
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"checkpoint {where} does not fit the model: missing {_few(missing)}, unexpected "
            f"{_few(unexpected)}, shape mismatches {_few(shapes)}"
        )


def _few(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items)} in all)' if len(items) > limit else ''}]"


def _empty_like_saved(metadata: Metadata, key: str, where: str) -> torch.Tensor:
    entry = metadata.state_dict_metadata.get(f"objects.{key}")
    if not isinstance(entry, TensorStorageMetadata):
        raise CheckpointError(f"checkpoint {where} lacks the tensor objects.{key} of its objects")
    return torch.empty(tuple(entry.size), dtype=entry.properties.dtype)


def _restore_fresh_optimizer(
    optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]], where: str
) -> None:
    """The checkpoint's optimizer had not stepped: clear the state, set the hyperparameters."""
    if len(groups) != len(optimizer.param_groups):
        raise CheckpointError(
            f"checkpoint {where} has {len(groups)} optimizer param groups, the optimizer has "
            f"{len(optimizer.param_groups)}"
        )
    optimizer.state.clear()
    for group, saved in zip(optimizer.param_groups, groups, strict=True):
        group.update(saved)
