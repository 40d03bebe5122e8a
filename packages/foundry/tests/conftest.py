"""Fixtures of the foundry suite: small tokenizers and corpora made here, a local S3 server,
mosaicml-streaming in isolation, and the shared GPT-NeoX-20B tokenizer when it is present."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from streaming.testing.fixtures import s3_bucket, s3_server  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[3]
NEOX = ROOT.parent / "shared" / "data" / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"
WORDS = [f"w{i}" for i in range(3000)]


def random_text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def write_jsonl(path: Path, texts: list[str], key: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({key: t}) + "\n" for t in texts))
    return path


@pytest.fixture(scope="session")
def neox_path() -> Path:
    if not NEOX.is_file():
        pytest.skip(f"the GPT-NeoX-20B tokenizer is not at {NEOX} (../shared/data is absent)")
    return NEOX


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> Path:
    """A 600-token byte-level BPE trained here on random words (EOS id 0, pad id 1)."""
    from foundry.tokenizer import CHAT_TOKENS, save_tokenizer, train_bpe

    rng = random.Random(0)
    texts = [random_text(rng, 50) for _ in range(400)]
    specials = ["<|endoftext|>", "<|pad|>", *CHAT_TOKENS]
    backend = train_bpe(texts, vocab_size=600, special_tokens=specials, min_frequency=2)
    out = tmp_path_factory.mktemp("tok") / "tiny"
    save_tokenizer(backend, out, eos_token="<|endoftext|>", pad_token="<|pad|>")
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A folder with two jsonl files and a text file: 240 documents, among them 10 exact copies,
    10 near copies (one word changed of ~120) and 10 documents of two words."""
    rng = random.Random(1)
    root = tmp_path_factory.mktemp("corpus")
    docs = [random_text(rng, rng.randint(60, 180)) for _ in range(200)]
    docs += [docs[i] for i in range(10)]  # exact copies
    for i in range(10, 20):
        words = docs[i].split()
        words[len(words) // 2] = "changed"
        docs.append(" ".join(words))
    docs += [random_text(rng, 2) for _ in range(10)]
    rng.shuffle(docs)
    write_jsonl(root / "a.jsonl", docs[:100])
    write_jsonl(root / "b" / "c.jsonl", docs[100:200])
    (root / "b" / "d.txt").write_text("\n".join(docs[200:]) + "\n")
    return root


@pytest.fixture(scope="session")
def mosaic():
    """mosaicml-streaming 0.13, isolated (see streaming.testing.mosaic); skips if unavailable."""
    from streaming.testing.mosaic import MosaicStreaming, MosaicUnavailable

    try:
        return MosaicStreaming.ensure()
    except MosaicUnavailable as err:
        pytest.skip(str(err))
