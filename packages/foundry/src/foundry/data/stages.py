"""The three stages of `foundry data prep`, each a plain function the driver (`prep.py`) runs.

    A  process_unit(job)        one work unit, in any process: read its documents, apply the
                                quality filters, hash the survivors (exact key, MinHash
                                signature) and tokenize them with EOS after each; the result
                                is one .npz file written whole (temporary name, then rename)
    B  deduplicate(results)     every unit's result in corpus order: drop exact copies, then
                                near-duplicates of kept documents; sequential and fast
    C  write_samples(...)       the kept documents' tokens, concatenated in corpus order, cut
                                into rows of max_seq_len tokens (the last partial row is
                                dropped, as llm-foundry does) and written with MDSWriter

Stage A may run in many processes in any order; B and C see the units in their fixed order, so
the output is the same bytes whatever the number of processes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from foundry.data.dedup import (
    PRIME,
    DedupConfig,
    NearDuplicateIndex,
    content_hash,
    minhash_permutations,
    minhash_signature,
    shingles,
)
from foundry.data.filters import FILTERS, FilterConfig, first_failure
from foundry.data.format import COLUMNS
from foundry.data.readers import InputFile, Segment, read_segment

__all__ = [
    "EXAMPLES_KEPT",
    "DedupResult",
    "StageCount",
    "UnitJob",
    "UnitSettings",
    "WriteSettings",
    "deduplicate",
    "load_unit",
    "process_unit",
    "write_samples",
]

EXAMPLES_KEPT = 5  # dropped documents named per stage in the report
_FILTER_NAMES = list(FILTERS)


@dataclass(frozen=True, kw_only=True)
class UnitSettings:
    """What every worker needs to process a unit (small and picklable)."""

    tokenizer: str
    eos_token: str | None
    text_key: str
    text_unit: str
    filters: FilterConfig
    dedup: DedupConfig


@dataclass(frozen=True, kw_only=True)
class UnitJob:
    """One unit of stage A: its segments (with their files) and where its result goes."""

    index: int
    segments: tuple[tuple[InputFile, Segment], ...]
    settings: UnitSettings
    result_path: str

    @property
    def size(self) -> int:
        return sum(seg.end - seg.start for _, seg in self.segments)


def _save_atomically(path: str, arrays: dict[str, np.ndarray]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def process_unit(job: UnitJob) -> int:
    """Stage A for one unit; returns its size in bytes (for the progress bar)."""
    from foundry.tokenizer import cached_tokenizer

    s = job.settings
    tokenizer = cached_tokenizer(s.tokenizer, s.eos_token)
    perms = minhash_permutations(s.dedup.num_perm, s.dedup.seed) if s.dedup.near else None
    codes, sizes, wheres, texts = [], [], [], []
    for file, segment in job.segments:
        for doc in read_segment(file, segment, text_unit=s.text_unit, text_key=s.text_key):
            failed = first_failure(doc.text, s.filters)
            codes.append(0 if failed is None else _FILTER_NAMES.index(failed) + 1)
            sizes.append(len(doc.text.encode("utf-8")))
            wheres.append(doc.where)
            if failed is None:
                texts.append(doc.text)
    exact = np.array([content_hash(t) for t in texts], dtype=np.uint64).reshape(-1, 2)
    num_perm = s.dedup.num_perm if perms else 0
    sigs = np.zeros((len(texts), num_perm), dtype=np.uint32)
    for i, text in enumerate(texts if perms else ()):
        sigs[i] = minhash_signature(shingles(text, s.dedup.ngram), perms)
    ids = tokenizer.encode_batch(texts) if texts else []
    eos = tokenizer.eos_token_id
    lengths = np.array([len(x) + 1 for x in ids], dtype=np.int64)
    tokens = np.empty(int(lengths.sum()), dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    for i, x in enumerate(ids):
        tokens[offsets[i] : offsets[i + 1] - 1] = x
        tokens[offsets[i + 1] - 1] = eos
    _save_atomically(
        job.result_path,
        {
            "codes": np.array(codes, dtype=np.int8),
            "sizes": np.array(sizes, dtype=np.int64),
            "wheres": np.frombuffer(json.dumps(wheres).encode(), dtype=np.uint8),
            "exact": exact,
            "sigs": sigs,
            "tokens": tokens,
            "offsets": offsets,
        },
    )
    return job.size


def load_unit(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@dataclass(kw_only=True)
class StageCount:
    """What one stage dropped: documents, their UTF-8 bytes and tokens, a few examples."""

    documents: int = 0
    bytes: int = 0
    tokens: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, *, size: int, tokens: int, example: str) -> None:
        self.documents += 1
        self.bytes += size
        self.tokens += tokens
        if len(self.examples) < EXAMPLES_KEPT:
            self.examples.append(example)


@dataclass(kw_only=True)
class DedupResult:
    """Stages A and B summed up: per unit, which filter-passing documents are kept."""

    keeps: list[np.ndarray]
    documents: int = 0
    bytes: int = 0
    stages: dict[str, StageCount] = field(default_factory=dict)
    kept_documents: int = 0
    kept_tokens: int = 0


def deduplicate(result_paths: list[str], config: DedupConfig) -> Iterator[DedupResult | None]:
    """Stage B over the units' results in order. Yields None after each unit (for a progress
    bar), then the result."""
    out = DedupResult(keeps=[])
    out.stages = {f"filter:{name}": StageCount() for name in FILTERS}
    out.stages["exact_dedup"] = StageCount()
    out.stages["near_dedup"] = StageCount()
    seen: set[tuple[int, int]] = set()
    near = NearDuplicateIndex(threshold=config.threshold, num_perm=config.num_perm)
    kept_where: list[str] = []
    for path in result_paths:
        unit = load_unit(path)
        wheres = json.loads(unit["wheres"].tobytes())
        codes, sizes = unit["codes"], unit["sizes"]
        out.documents += len(codes)
        out.bytes += int(sizes.sum())
        passed = np.flatnonzero(codes == 0)
        for i in np.flatnonzero(codes):
            stage = out.stages[f"filter:{_FILTER_NAMES[codes[i] - 1]}"]
            stage.add(size=int(sizes[i]), tokens=0, example=wheres[i])
        keep = np.ones(len(passed), dtype=bool)
        lengths = np.diff(unit["offsets"])
        for k, doc in enumerate(passed):
            info = {"size": int(sizes[doc]), "tokens": int(lengths[k])}
            key = (int(unit["exact"][k, 0]), int(unit["exact"][k, 1]))
            if config.exact and key in seen:
                out.stages["exact_dedup"].add(**info, example=wheres[doc])
                keep[k] = False
                continue
            seen.add(key)
            signature = unit["sigs"][k]
            if config.near and signature.size and not (signature == PRIME).all():
                twin = near.check_and_add(len(kept_where), signature)
                if twin is not None:
                    example = f"{wheres[doc]} (near {kept_where[twin]})"
                    out.stages["near_dedup"].add(**info, example=example)
                    keep[k] = False
                    continue
            kept_where.append(wheres[doc])
            out.kept_documents += 1
            out.kept_tokens += info["tokens"]
        out.keeps.append(keep)
        yield None
    yield out


def _kept_tokens(path: str, keep: np.ndarray) -> np.ndarray:
    unit = load_unit(path)
    offsets, tokens = unit["offsets"], unit["tokens"]
    parts = [tokens[offsets[k] : offsets[k + 1]] for k in np.flatnonzero(keep)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int32)


@dataclass(frozen=True, kw_only=True)
class WriteSettings:
    """Where and how stage C writes."""

    out: str
    max_seq_len: int
    compression: str | None
    size_limit: str
    exist_ok: bool


def write_samples(
    result_paths: list[str], keeps: list[np.ndarray], settings: WriteSettings
) -> Iterator[int]:
    """Stage C. Yields the number of samples written after each unit."""
    from streaming import MDSWriter

    carry = np.empty(0, dtype=np.int32)
    length = settings.max_seq_len
    with MDSWriter(
        out=settings.out,
        columns=COLUMNS,
        compression=settings.compression,
        hashes=["xxh64"],
        size_limit=settings.size_limit,
        exist_ok=settings.exist_ok,
    ) as writer:
        for path, keep in zip(result_paths, keeps, strict=True):
            carry = np.concatenate([carry, _kept_tokens(path, keep)])
            rows = len(carry) // length
            for r in range(rows):
                writer.write({"tokens": carry[r * length : (r + 1) * length]})
            carry = carry[rows * length :]
            yield rows
