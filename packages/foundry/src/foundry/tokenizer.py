"""Tokenizers: load a `tokenizer.json`, train a byte-level BPE, and check one against a model.

`load_tokenizer(path)` takes a `tokenizer.json` file or a folder holding one (the GPT-NeoX-20B
tokenizer is MPT's) and returns a `FoundryTokenizer`, a thin adapter over HF `tokenizers` that
satisfies evalkit's `Tokenizer` contract (`encode`, `decode`, `eos_token_id`, `pad_token_id`).
EOS and padding tokens come from a `tokenizer_config.json` beside the file when there is one (as
transformers writes it), else from the first known name the vocabulary holds.

`train_bpe(texts, ...)` trains a byte-level BPE (GPT-2's pre-tokenizer and decoder, so any text
round-trips) whose special tokens come first: EOS, padding, then ChatML's `<|im_start|>` and
`<|im_end|>`. `save_tokenizer` writes `tokenizer.json` and a `tokenizer_config.json` (EOS, pad,
a ChatML chat template) that transformers' `PreTrainedTokenizerFast.from_pretrained` loads.

`check_vocab_fits` and `check_seq_len` are the checks a run makes before any long work.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

if TYPE_CHECKING:
    from foundry.schema import TokenizerTrainCommand

__all__ = [
    "CHATML_TEMPLATE",
    "CHAT_TOKENS",
    "EOS_NAMES",
    "PAD_NAMES",
    "FoundryTokenizer",
    "cached_tokenizer",
    "check_seq_len",
    "check_vocab_fits",
    "load_tokenizer",
    "run_train_command",
    "save_tokenizer",
    "train_bpe",
    "train_from_config",
]

EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")
PAD_NAMES = ("<|pad|>", "<pad>", "[PAD]")
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CONFIG_NAME = "tokenizer_config.json"
FILE_NAME = "tokenizer.json"


class FoundryTokenizer:
    """An HF `tokenizers.Tokenizer` with the ids a run needs; evalkit's `Tokenizer` contract.

    encode(text) adds no special tokens; decode(ids) keeps them (so `<|im_end|>` stays visible).
    `vocab_size` is the largest id + 1: the embedding rows a model needs for it.
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        eos_token: str | None,
        pad_token: str | None,
        source: str,
    ) -> None:
        self.backend = tokenizer
        self.source = source
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.eos_token_id = self._id_of(eos_token, "eos_token")
        self.pad_token_id = self._id_of(pad_token, "pad_token")
        self.vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1

    def _id_of(self, token: str | None, what: str) -> int | None:
        if token is None:
            return None
        found = self.backend.token_to_id(token)
        if found is None:
            raise ValueError(f"{what} {token!r} is not in the vocabulary of {self.source}")
        return found

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def __repr__(self) -> str:
        return (
            f"FoundryTokenizer({self.source!r}, vocab_size={self.vocab_size}, "
            f"eos={self.eos_token!r}, pad={self.pad_token!r})"
        )


def _first_known(tokenizer: tokenizers.Tokenizer, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if tokenizer.token_to_id(n) is not None), None)


def _configured(config_path: Path, key: str) -> str | None:
    if not config_path.is_file():
        return None
    value = json.loads(config_path.read_text()).get(key)
    if isinstance(value, dict):  # transformers' AddedToken form
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_tokenizer(
    path: str | os.PathLike[str], *, eos_token: str | None = None, pad_token: str | None = None
) -> FoundryTokenizer:
    """A `tokenizer.json` file or a folder holding one. `eos_token`/`pad_token` override the
    configured or guessed ones."""
    where = Path(path).expanduser()
    file = where / FILE_NAME if where.is_dir() else where
    if not file.is_file():
        hint = f" (a folder must hold {FILE_NAME})" if where.is_dir() else ""
        raise FileNotFoundError(f"tokenizer {os.fspath(path)!r} not found{hint}")
    try:
        backend = tokenizers.Tokenizer.from_file(str(file))
    except Exception as err:  # tokenizers raises a bare Exception for bad JSON
        raise ValueError(f"{file}: not a HF tokenizers tokenizer.json ({err})") from err
    config = file.parent / CONFIG_NAME
    eos = eos_token or _configured(config, "eos_token") or _first_known(backend, EOS_NAMES)
    pad = pad_token or _configured(config, "pad_token") or _first_known(backend, PAD_NAMES)
    return FoundryTokenizer(backend, eos_token=eos, pad_token=pad, source=str(file))


@lru_cache(maxsize=4)
def cached_tokenizer(path: str, eos_token: str | None) -> FoundryTokenizer:
    """`load_tokenizer`, once per process (data-prep workers tokenize many units)."""
    return load_tokenizer(path, eos_token=eos_token)


def train_bpe(
    texts: Iterable[str],
    *,
    vocab_size: int,
    special_tokens: list[str],
    min_frequency: int = 2,
) -> tokenizers.Tokenizer:
    """A byte-level BPE trained on `texts`; `special_tokens` take ids 0, 1, ... in order."""
    floor = 256 + len(special_tokens)
    if vocab_size < floor:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs its 256 byte tokens "
            f"plus {len(special_tokens)} special tokens; set vocab_size >= {floor}"
        )
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special tokens repeat: {special_tokens}")
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def save_tokenizer(
    tokenizer: tokenizers.Tokenizer,
    out: str | os.PathLike[str],
    *,
    eos_token: str,
    pad_token: str | None,
    overwrite: bool = False,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write `tokenizer.json` and `tokenizer_config.json` (plus `extra_files`, {name: text}) into
    the folder `out`, whole: they are written into a temporary folder that is then renamed, so a
    crash never leaves half a tokenizer. An existing `out` is replaced only with overwrite=True."""
    target = Path(out).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise FileExistsError(
            f"out={os.fspath(out)} already exists; pass overwrite=true to replace it"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer.save(str(staging / FILE_NAME))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": eos_token,
            "pad_token": pad_token,
            "chat_template": CHATML_TEMPLATE,
            "clean_up_tokenization_spaces": False,
        }
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def check_vocab_fits(
    tokenizer: FoundryTokenizer, vocab_size: int, *, key: str = "model.vocab_size"
) -> None:
    """Raise if the tokenizer has ids the model's embedding has no row for."""
    if tokenizer.vocab_size > vocab_size:
        padded = -(-tokenizer.vocab_size // 64) * 64
        raise ValueError(
            f"the tokenizer {tokenizer.source} has {tokenizer.vocab_size} tokens but "
            f"{key}={vocab_size}: set {key}={padded} (its size rounded up to a multiple of 64) "
            f"or use a tokenizer with at most {vocab_size} tokens"
        )


def check_seq_len(
    max_seq_len: int,
    model_max_seq_len: int,
    *,
    key: str = "max_seq_len",
    model_key: str = "model.max_seq_len",
) -> None:
    """Raise if sequences of `max_seq_len` tokens are longer than the model was built for."""
    if max_seq_len > model_max_seq_len:
        raise ValueError(
            f"{key}={max_seq_len} is longer than {model_key}={model_max_seq_len}: set "
            f"{key}<={model_max_seq_len} or {model_key}>={max_seq_len}"
        )


def _corpus(cfg: TokenizerTrainCommand, staging: str) -> Iterator[str]:
    from foundry.data.readers import expand_inputs, iter_documents, plan_units

    files = expand_inputs(list(cfg.inputs), staging=staging, include=cfg.include)
    units = plan_units(files, text_unit=cfg.text_unit, unit_bytes=1 << 24)
    docs = iter_documents(files, units, text_unit=cfg.text_unit, text_key=cfg.text_key)
    for n, doc in enumerate(docs):
        if cfg.max_documents is not None and n >= cfg.max_documents:
            return
        yield doc.text


def train_from_config(cfg: TokenizerTrainCommand, *, config_text: str = "") -> FoundryTokenizer:
    """`foundry tokenizer train`: train on the corpus, save into `out` with the resolved config."""
    special = [cfg.eos_token, *([cfg.pad_token] if cfg.pad_token else []), *cfg.chat_tokens]
    target = Path(cfg.out).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not cfg.overwrite:
        raise FileExistsError(f"out={cfg.out} already exists; pass overwrite=true to replace it")
    with tempfile.TemporaryDirectory(prefix="foundry-tokenizer-") as staging:
        corpus = _corpus(cfg, staging)
        first = next(corpus, None)
        if first is None:
            raise ValueError(f"the corpus {list(cfg.inputs)} holds no documents")
        texts = itertools.chain([first], corpus)
        backend = train_bpe(
            texts,
            vocab_size=cfg.vocab_size,
            special_tokens=special,
            min_frequency=cfg.min_frequency,
        )
    extra = {"foundry_config.yaml": config_text} if config_text else {}
    save_tokenizer(
        backend,
        target,
        eos_token=cfg.eos_token,
        pad_token=cfg.pad_token,
        overwrite=cfg.overwrite,
        extra_files=extra,
    )
    return load_tokenizer(target)


def run_train_command(cfg: TokenizerTrainCommand, config_text: str) -> int:
    """The `foundry tokenizer train` command."""
    tokenizer = train_from_config(cfg, config_text=config_text)
    print(
        f"trained {tokenizer.vocab_size} tokens (EOS {tokenizer.eos_token!r} = "
        f"{tokenizer.eos_token_id}, pad {tokenizer.pad_token!r} = {tokenizer.pad_token_id}) "
        f"-> {cfg.out}/tokenizer.json"
    )
    return 0
