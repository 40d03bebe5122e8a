"""evalkit: in-context-learning evaluation of causal language models.

    import evalkit
    results = evalkit.evaluate(model, tokenizer, tasks="tasks.yaml", data_root="icl/")
    print(evalkit.report.markdown([results]))

llm-foundry's ICL task types and YAML, scores that do not depend on batching, the gauntlet, a
report (markdown, JSON, PNG), `compare`, a command (`python -m evalkit`) and lm-eval interop
(`evalkit.lm_eval` registers the "evalkit" model with lm-eval). Any causal LM that maps token ids
to logits fits (`evalkit.protocols`); evalkit never imports `mpt`.
"""

from evalkit.evaluate import EvalConfig, Evaluator, evaluate
from evalkit.gauntlet import Gauntlet, GauntletResult, load_gauntlet, score_gauntlet
from evalkit.hf import HFCausalLM, load_hf
from evalkit.protocols import (
    CausalLM,
    PrefixCache,
    PrefixCacheLM,
    Tokenizer,
    check_causal_lm,
    check_tokenizer,
)
from evalkit.report import compare, markdown
from evalkit.results import EvalResults, TaskResult
from evalkit.tasks import Issue, TaskConfig, TaskSuite, load_tasks
from evalkit.tokenizer import as_tokenizer

__version__ = "0.1.3"
__all__ = [
    "CausalLM",
    "EvalConfig",
    "EvalResults",
    "Evaluator",
    "Gauntlet",
    "GauntletResult",
    "HFCausalLM",
    "Issue",
    "PrefixCache",
    "PrefixCacheLM",
    "TaskConfig",
    "TaskResult",
    "TaskSuite",
    "Tokenizer",
    "as_tokenizer",
    "check_causal_lm",
    "check_tokenizer",
    "compare",
    "evaluate",
    "load_gauntlet",
    "load_hf",
    "load_tasks",
    "markdown",
    "score_gauntlet",
]
