"""Deduplication: exact duplicates by content hash, near-duplicates by MinHash with LSH.

Exact: xxh3-128 of the document's text (surrounding whitespace stripped); a document whose hash
an earlier document had is dropped.

Near: a document's shingles are its word n-grams (lower-cased, `ngram` words each; a document
shorter than that is one shingle). Each shingle is hashed (xxh32) and `num_perm` universal hash
functions h(x) = (a·x + b) mod p with p = 2^32 - 5 give the signature, the minimum of each
function over the shingles: two documents agree in one position with probability equal to the
Jaccard similarity of their shingle sets. LSH cuts the signature into `bands` bands of `rows`
values (chosen, as datasketch does, to minimise the weighted false-positive plus false-negative
area around `threshold`; false negatives weigh 9x, since every candidate is verified); documents that agree on a whole band are candidates. A candidate is a
near-duplicate when its signatures agree in at least `threshold` of the positions (an estimate
of the Jaccard similarity, std ≈ sqrt(J(1-J)/num_perm)), which removes most of LSH's false
candidates.

Documents are visited in the corpus order: a document is dropped when it is a near-duplicate of
an earlier document that was kept, so the kept documents never pair above the threshold within
a bucket and each dropped one names the kept one it copies. The result depends on the order
and the seed alone, never on how signatures were computed in parallel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xxhash

from foundry.validate import opt

__all__ = [
    "PRIME",
    "DedupConfig",
    "NearDuplicateIndex",
    "content_hash",
    "lsh_params",
    "minhash_permutations",
    "minhash_signature",
    "shingles",
]

PRIME = (1 << 32) - 5  # the largest prime below 2^32: a·x + b stays below 2^64 for x, a, b < p
# LSH candidates are verified on their signatures, so a false candidate costs only a comparison
# while a missed pair is a duplicate kept: weigh misses 9x. At threshold 0.8 with 128 functions
# this picks 14 bands of 9 rows: a pair at Jaccard 0.9 is a candidate with probability 0.999,
# one at 0.5 with 0.027 (and then almost never passes the check).
FALSE_POSITIVE_WEIGHT = 0.1


@dataclass(frozen=True, kw_only=True)
class DedupConfig:
    """exact: drop exact copies. near: drop near-duplicates at Jaccard >= threshold, with
    num_perm MinHash functions over word n-grams of `ngram` words, seeded by `seed`."""

    exact: bool = opt(True, "drop exact copies (xxh3-128 of the stripped text)")
    near: bool = opt(True, "drop near-duplicates (MinHash + LSH)")
    threshold: float = opt(0.8, "Jaccard similarity at which a document is a near-duplicate")
    num_perm: int = opt(128, "MinHash functions (more: a finer similarity estimate)")
    ngram: int = opt(5, "words per shingle")
    seed: int = opt(42, "seed of the hash functions")

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 < self.threshold < 1.0:
            problems.append(f"dedup.threshold must be in (0, 1), got {self.threshold}")
        if not 8 <= self.num_perm <= 1024:
            problems.append(f"dedup.num_perm must be in [8, 1024], got {self.num_perm}")
        if self.ngram < 1:
            problems.append(f"dedup.ngram must be >= 1, got {self.ngram}")
        if problems:
            raise ValueError("; ".join(problems))


def content_hash(text: str) -> tuple[int, int]:
    """The exact-duplicate key of a document: xxh3-128 of its stripped UTF-8 text, as 2 uint64."""
    digest = xxhash.xxh3_128_intdigest(text.strip().encode("utf-8"))
    return digest >> 64, digest & ((1 << 64) - 1)


def shingles(text: str, ngram: int) -> np.ndarray:
    """The distinct xxh32 hashes (mod PRIME, uint64) of the document's word n-grams."""
    words = text.lower().split()
    if not words:
        return np.empty(0, dtype=np.uint64)
    n = min(ngram, len(words))
    grams = {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}
    hashes = [xxhash.xxh32_intdigest(g.encode("utf-8")) % PRIME for g in grams]
    return np.unique(np.asarray(hashes, dtype=np.uint64))


def minhash_permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of the universal hash functions, uint64 arrays of num_perm each."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, PRIME, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, PRIME, size=num_perm, dtype=np.uint64)
    return a, b


def minhash_signature(hashes: np.ndarray, perms: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The uint32 signature (num_perm,) of a set of shingle hashes; all PRIME for an empty set."""
    a, b = perms
    if hashes.size == 0:
        return np.full(a.shape, PRIME, dtype=np.uint32)
    values = (a[:, None] * hashes[None, :] + b[:, None]) % np.uint64(PRIME)  # (num_perm, shingles)
    return values.min(axis=1).astype(np.uint32)


def _area(y: np.ndarray, x: np.ndarray) -> float:
    return float(((y[1:] + y[:-1]) * np.diff(x)).sum() / 2)  # the trapezoid rule


def _candidate_probability(s: np.ndarray, bands: int, rows: int) -> np.ndarray:
    return 1.0 - (1.0 - s**rows) ** bands


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands·rows <= num_perm minimising the area of false positives below
    `threshold` (weight FALSE_POSITIVE_WEIGHT) plus false negatives above it (the rest)."""
    best, best_cost = (1, num_perm), float("inf")
    below = np.linspace(0.0, threshold, 201)
    above = np.linspace(threshold, 1.0, 201)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = _area(_candidate_probability(below, bands, rows), below)
            fn = _area(1.0 - _candidate_probability(above, bands, rows), above)
            cost = FALSE_POSITIVE_WEIGHT * fp + (1.0 - FALSE_POSITIVE_WEIGHT) * fn
            if cost < best_cost:
                best, best_cost = (bands, rows), cost
    return best


class NearDuplicateIndex:
    """LSH buckets of the kept documents' signatures; `check_and_add` visits one document.

    Buckets hold at most `bucket_cap` kept documents each (a document is compared with those
    only), so a huge bucket of unrelated documents cannot make the pass quadratic.
    """

    def __init__(self, *, threshold: float, num_perm: int, bucket_cap: int = 32) -> None:
        self.threshold = threshold
        self.num_perm = num_perm
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self.bucket_cap = bucket_cap
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]
        self._signatures: list[np.ndarray] = []
        self._ids: list[int] = []

    def _keys(self, signature: np.ndarray) -> list[bytes]:
        r = self.rows
        return [signature[i * r : (i + 1) * r].tobytes() for i in range(self.bands)]

    def check_and_add(self, doc_id: int, signature: np.ndarray) -> int | None:
        """The id of a kept document that `signature` nearly duplicates (then it is not added);
        else None, and the document is kept and indexed."""
        if signature.shape != (self.num_perm,):
            raise ValueError(f"signature shape {signature.shape}, expected ({self.num_perm},)")
        keys = self._keys(signature)
        seen: set[int] = set()
        for band, key in enumerate(keys):
            for slot in self._buckets[band].get(key, ()):
                if slot in seen:
                    continue
                seen.add(slot)
                agree = np.count_nonzero(self._signatures[slot] == signature) / self.num_perm
                if agree >= self.threshold:
                    return self._ids[slot]
        slot = len(self._signatures)
        self._signatures.append(signature)
        self._ids.append(doc_id)
        for band, key in enumerate(keys):
            members = self._buckets[band].setdefault(key, [])
            if len(members) < self.bucket_cap:
                members.append(slot)
        return None
