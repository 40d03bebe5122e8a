"""Where a model to evaluate comes from: a Hugging Face folder or a `module:function` factory.

    model, tokenizer = load_model(pretrained="path/to/hf_dir")
    model, tokenizer = load_model(factory="my_pkg.models:tiny", tokenizer="tokenizer.json")

A factory is any importable function that takes no arguments and returns a model, or a
(model, tokenizer) pair; it is how a checkpoint of our own stack (an `mpt` model built from its
config and loaded from composer-lite's checkpoint) reaches evalkit without evalkit importing it.
A tokenizer path is a `tokenizer.json` (HF `tokenizers`) or a folder (transformers).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import torch

from evalkit.hf import DTYPES, load_hf, resolve_dtype
from evalkit.protocols import Tokenizer
from evalkit.tokenizer import as_tokenizer

__all__ = ["import_factory", "load_model", "load_tokenizer"]


def import_factory(spec: str) -> Callable[[], Any]:
    """The function named by `module:function` (a dotted module path, then its attribute)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"a model factory is 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import {module_name!r} for factory {spec!r}: {err}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{module_name} has no function {attr!r} (factory {spec!r})")
    return factory


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """A tokenizer from a `tokenizer.json` file or a transformers folder."""
    path = os.fspath(path)
    if os.path.isfile(path):
        from tokenizers import Tokenizer as RustTokenizer

        return as_tokenizer(RustTokenizer.from_file(path))
    if os.path.isdir(path):
        from transformers import AutoTokenizer

        return as_tokenizer(AutoTokenizer.from_pretrained(path))
    raise FileNotFoundError(f"{path}: no tokenizer file (tokenizer.json) or folder")


def load_model(
    *,
    pretrained: str | os.PathLike[str] | None = None,
    factory: str | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    dtype: str = "auto",
) -> tuple[Any, Tokenizer | None]:
    """(model, tokenizer) from exactly one of `pretrained` (HF folder) and `factory`; a
    `tokenizer` path overrides the folder's or the factory's tokenizer (None: a factory that
    returned none and no path). `dtype` "auto": a factory's model keeps the dtype it was made
    in; a folder loads in bf16 on a GPU, fp32 on a CPU."""
    if (pretrained is None) == (factory is None):
        raise ValueError("give exactly one of a Hugging Face model folder and a model factory")
    if dtype != "auto":
        resolve_dtype(dtype, device)  # the name checked before any weight is read
    tok: Tokenizer | None = None
    if pretrained is not None:
        model, tok = load_hf(pretrained, device=device, dtype=dtype)
    else:
        made = import_factory(factory)()
        model, tok = made if isinstance(made, tuple) else (made, None)
        cast = {} if dtype == "auto" else {"dtype": DTYPES[dtype]}
        model = model.to(device=device, **cast)
        tok = as_tokenizer(tok) if tok is not None else None
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
    return model, tok
