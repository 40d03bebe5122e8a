"""Near-duplicate detection (MinHash + LSH), exact hashing, and the quality filters."""

from __future__ import annotations

import random

import numpy as np
import pytest

from foundry.data.dedup import (
    DedupConfig,
    NearDuplicateIndex,
    content_hash,
    lsh_params,
    minhash_permutations,
    minhash_signature,
    shingles,
)
from foundry.data.filters import FilterConfig, first_failure


def planted_pair(rng: random.Random, vocab: list[str], jaccard: float, size: int = 200):
    """Two documents over distinct words whose word sets have exactly this Jaccard similarity:
    `shared` common words and `unique` words of each alone, shared / (shared + 2 unique) = J."""
    shared = round(size * jaccard)
    unique = (size - shared) // 2
    words = rng.sample(vocab, shared + 2 * unique)
    common, only_a, only_b = (
        words[:shared],
        words[shared : shared + unique],
        words[shared + unique :],
    )
    a, b = common + only_a, common + only_b
    rng.shuffle(a)
    rng.shuffle(b)
    return " ".join(a), " ".join(b)


def true_jaccard(a: str, b: str) -> float:
    x, y = set(a.split()), set(b.split())
    return len(x & y) / len(x | y)


def test_planted_pairs_recall_and_false_positives():
    """The issue's test: pairs at Jaccard 0.9 must be found (recall >= 0.95), pairs at 0.5 must
    not (false positives <= 0.05), at threshold 0.8. Shingles of one word (ngram=1), so the
    planted similarity is the similarity of the shingle sets."""
    rng = random.Random(7)
    vocab = [f"tok{i}" for i in range(2_000_000)]
    config = DedupConfig(threshold=0.8, ngram=1, num_perm=128)
    perms = minhash_permutations(config.num_perm, config.seed)
    index = NearDuplicateIndex(threshold=config.threshold, num_perm=config.num_perm)
    found = {0.9: 0, 0.5: 0}
    pairs = 200
    doc_id = 0
    for target in (0.9, 0.5):
        for _ in range(pairs):
            a, b = planted_pair(rng, vocab, target)
            assert true_jaccard(a, b) == pytest.approx(target, abs=0.003)
            sig_a = minhash_signature(shingles(a, config.ngram), perms)
            sig_b = minhash_signature(shingles(b, config.ngram), perms)
            assert index.check_and_add(doc_id, sig_a) is None, "an unrelated document matched"
            twin = index.check_and_add(doc_id + 1, sig_b)
            found[target] += twin == doc_id
            doc_id += 2
    recall = found[0.9] / pairs
    false_positives = found[0.5] / pairs
    assert recall >= 0.95, recall
    assert false_positives <= 0.05, false_positives


def test_signature_agreement_estimates_jaccard():
    rng = random.Random(0)
    vocab = [f"v{i}" for i in range(100_000)]
    perms = minhash_permutations(256, 1)
    estimates = []
    for _ in range(30):
        a, b = planted_pair(rng, vocab, 0.7)
        sa, sb = (minhash_signature(shingles(t, 1), perms) for t in (a, b))
        estimates.append(np.mean(sa == sb))
    assert np.mean(estimates) == pytest.approx(0.7, abs=0.02)


def test_lsh_params_fit_the_budget_and_find_likely_pairs():
    for threshold in (0.5, 0.8, 0.9):
        bands, rows = lsh_params(threshold, 128)
        assert bands * rows <= 128
        p_above = 1 - (1 - (threshold + 0.1) ** rows) ** bands
        assert p_above > 0.95, (threshold, bands, rows)


def test_exact_hash_ignores_surrounding_whitespace_only():
    assert content_hash("a b\n") == content_hash("  a b")
    assert content_hash("a b") != content_hash("a  b")


def test_shingles_of_short_documents():
    assert shingles("", 5).size == 0
    assert shingles("one two", 5).size == 1  # shorter than ngram: one shingle
    assert shingles("a b c d e f", 5).size == 2


@pytest.mark.parametrize(
    ("text", "config", "failure"),
    [
        ("too short", FilterConfig(min_words=3), "min_words"),
        ("three words here", FilterConfig(min_words=3), None),
        ("# a # b # c d e f", FilterConfig(max_symbol_ratio=0.1), "max_symbol_ratio"),
        ("a b c d e f g h i j #", FilterConfig(max_symbol_ratio=0.1), None),
        ("12 34 56 ab", FilterConfig(min_alpha_fraction=0.5), "min_alpha_fraction"),
        ("слово 34 λέξη 56", FilterConfig(min_alpha_fraction=0.5), None),  # any alphabet counts
        (
            "x\nx\nx\ny",
            FilterConfig(max_duplicate_line_fraction=0.3),
            "max_duplicate_line_fraction",
        ),
        ("x\n\n\ny\nz", FilterConfig(max_duplicate_line_fraction=0.3), None),  # blanks ignored
        ("12 34", FilterConfig(min_words=3, min_alpha_fraction=0.5), "min_words"),  # the first one
    ],
)
def test_quality_filters(text, config, failure):
    assert first_failure(text, config) == failure


def test_filter_and_dedup_settings_are_checked():
    with pytest.raises(ValueError, match="min_alpha_fraction must be in"):
        FilterConfig(min_alpha_fraction=2.0)
    with pytest.raises(ValueError, match="threshold must be in"):
        DedupConfig(threshold=1.5)
