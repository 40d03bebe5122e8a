"""Document quality filters: cheap, language-agnostic heuristics in the spirit of Gopher's rules.

Each filter is a plain function `(text, words, threshold) -> bool` (True: keep), chosen from
`FILTERS` in a fixed order; `first_failure(text, config)` names the first filter that drops a
document, or None. A threshold of None turns its filter off.

    min_words                    fewer whitespace-separated words than this: dropped
    max_symbol_ratio             ('#' + '...' + '…') per word above this: dropped (Gopher: 0.1)
    min_alpha_fraction           fewer words holding a letter than this fraction: dropped (Gopher: 0.8)
    max_duplicate_line_fraction  non-blank lines that repeat an earlier line of the document, as
                                 a fraction of its non-blank lines, above this: dropped (Gopher: 0.3)

Letters are any alphabet's (`str.isalpha`), so none of these prefers one language.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from foundry.validate import opt

__all__ = ["FILTERS", "FilterConfig", "first_failure"]


@dataclass(frozen=True, kw_only=True)
class FilterConfig:
    """Thresholds of the quality filters (None: that filter is off). See the module docstring."""

    min_words: int | None = opt(None, "drop documents with fewer words")
    max_symbol_ratio: float | None = opt(None, "drop above this many '#'/'...' per word")
    min_alpha_fraction: float | None = opt(None, "drop below this fraction of words with a letter")
    max_duplicate_line_fraction: float | None = opt(
        None, "drop above this fraction of repeated non-blank lines"
    )

    def __post_init__(self) -> None:
        problems = []
        if self.min_words is not None and self.min_words < 0:
            problems.append(f"filters.min_words must be >= 0, got {self.min_words}")
        for name in ("min_alpha_fraction", "max_duplicate_line_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                problems.append(f"filters.{name} must be in [0, 1], got {value}")
        if self.max_symbol_ratio is not None and self.max_symbol_ratio < 0:
            problems.append(f"filters.max_symbol_ratio must be >= 0, got {self.max_symbol_ratio}")
        if problems:
            raise ValueError("; ".join(problems))


def min_words(text: str, words: list[str], threshold: float) -> bool:
    return len(words) >= threshold


def max_symbol_ratio(text: str, words: list[str], threshold: float) -> bool:
    symbols = text.count("#") + text.count("...") + text.count("…")
    return symbols <= threshold * max(len(words), 1)


def min_alpha_fraction(text: str, words: list[str], threshold: float) -> bool:
    if not words:
        return threshold <= 0
    alpha = sum(1 for w in words if any(c.isalpha() for c in w))
    return alpha >= threshold * len(words)


def max_duplicate_line_fraction(text: str, words: list[str], threshold: float) -> bool:
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return True
    repeats = len(lines) - len(set(lines))
    return repeats <= threshold * len(lines)


FILTERS: dict[str, Callable[[str, list[str], float], bool]] = {
    "min_words": min_words,
    "max_symbol_ratio": max_symbol_ratio,
    "min_alpha_fraction": min_alpha_fraction,
    "max_duplicate_line_fraction": max_duplicate_line_fraction,
}
assert list(FILTERS) == [f.name for f in fields(FilterConfig)], "one filter per threshold"


def first_failure(text: str, config: FilterConfig) -> str | None:
    """The name of the first filter that drops `text`, or None if it passes them all."""
    words = text.split()
    for name, keep in FILTERS.items():
        threshold = getattr(config, name)
        if threshold is not None and not keep(text, words, threshold):
            return name
    return None
