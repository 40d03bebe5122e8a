"""evalkit: in-context-learning evaluation of causal language models.

So far this package holds its contracts (`evalkit.protocols`); the ICL tasks, the gauntlet and the
lm-eval adapter are not built yet.
"""

from evalkit.protocols import CausalLM, Tokenizer, check_causal_lm, check_tokenizer

__version__ = "0.0.1"
__all__ = ["CausalLM", "Tokenizer", "check_causal_lm", "check_tokenizer"]
