"""evalkit as an lm-eval model: `lm_eval.simple_evaluate(model="evalkit", ...)`.

Importing this module registers the model class `EvalkitLM` under the name "evalkit" in
lm-eval's model registry (the one import with a side effect in evalkit; nothing else imports it):

    import evalkit.lm_eval  # noqa: F401 (registers "evalkit")
    lm_eval.simple_evaluate(model="evalkit", model_args="pretrained=path/to/hf_dir", tasks=[...])
    lm_eval.simple_evaluate(model="evalkit", model_args={"model": m, "tokenizer": t}, ...)

Everything evalkit can evaluate works: a Hugging Face folder (`pretrained`), a factory
(`model_factory="module:function"`, with `tokenizer=` a path when it returns no tokenizer), or a
model and tokenizer object. Log-likelihoods come from evalkit's scorer (fp32 log-softmax,
length-sorted batches, one forward of a shared context with a KV cache), generation from its
greedy generator (`do_sample` must be false). lm-eval's own tokenization rules apply (it moves a
context's trailing spaces into the continuation and encodes the pair jointly, as evalkit does).
One process: lm-eval's multi-rank mode is not wired to evalkit's.
"""

from __future__ import annotations

import os
from typing import Any

# lm-eval fills its model registry with its own models only when the registry is empty: load
# them first, so that registering "evalkit" does not hide "hf" and the others
import lm_eval.models  # noqa: F401
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from evalkit.evaluate import truncate
from evalkit.generation import GenerationOptions, generate_greedy
from evalkit.hf import as_causal_lm, model_window
from evalkit.loading import load_model
from evalkit.logprobs import Request, inspect_model
from evalkit.protocols import check_causal_lm
from evalkit.scoring import ScoringOptions, score_requests
from evalkit.tokenizer import as_tokenizer

__all__ = ["EvalkitLM"]


@register_model("evalkit")
class EvalkitLM(TemplateLM):
    """lm-eval's model interface over evalkit's scorer and generator."""

    def __init__(
        self,
        pretrained: str | None = None,
        model: Any = None,
        tokenizer: Any = None,
        model_factory: str | None = None,
        batch_size: int | str | None = 32,
        max_batch_size: int | None = None,
        device: str | None = "cpu",
        dtype: str = "fp32",
        max_length: int | None = None,
        sharing: str = "auto",
    ) -> None:
        super().__init__()
        if model is None:
            path = tokenizer if isinstance(tokenizer, (str, os.PathLike)) else None
            model, loaded = load_model(
                pretrained=pretrained,
                factory=model_factory,
                tokenizer=path,
                device=device or "cpu",
                dtype=dtype,
            )
            tokenizer = loaded if path is not None or tokenizer is None else tokenizer
        if tokenizer is None:
            raise ValueError("the evalkit lm-eval model needs a tokenizer with its model")
        self.model = as_causal_lm(model)
        check_causal_lm(self.model)
        self.model.eval()
        self.tokenizer = as_tokenizer(tokenizer)
        self.call = inspect_model(self.model)
        window = max_length or model_window(self.model)
        if window is None:
            raise ValueError("the model declares no context window: give max_length")
        self._window = int(window)
        size = batch_size if isinstance(batch_size, int) else None
        if isinstance(batch_size, str) and batch_size.isdigit():
            size = int(batch_size)
        self._batch_size = max(1, size or max_batch_size or 32)
        self.sharing = sharing

    @property
    def eot_token_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no EOS token, which lm-eval needs")
        return eos

    @property
    def max_length(self) -> int:
        return self._window

    @property
    def device(self) -> Any:
        return self.call.device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any):
        return list(self.tokenizer.encode(string))

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.eot_token_id

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any):
        """(log-likelihood, greedy) per ((context, continuation), context ids, continuation ids);
        requests with the same context ids are scored as one group (one forward of it)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        prepared = []
        for i, (_, context, continuation) in enumerate(requests):
            request = truncate(context, continuation, self._window)
            if request is None:
                raise ValueError(
                    f"a {len(continuation)}-token continuation does not fit the "
                    f"{self._window}-token window"
                )
            prepared.append(request)
            groups.setdefault(tuple(context), []).append(i)
        order = list(groups.values())
        options = ScoringOptions(
            batch_size=self._batch_size,
            sharing=self.sharing,
            pad_token_id=self._pad_id(),
            max_seq_len=self._window,
        )
        scores = score_requests(
            self.model, [[prepared[i] for i in g] for g in order], options, call=self.call
        )
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        for group, group_scores in zip(order, scores, strict=True):
            for i, score in zip(group, group_scores, strict=True):
                out[i] = (score.logprob, score.greedy)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of whole texts, in disjoint windows of the model's length."""
        windows, owners = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            rolling = get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self._window,
                context_len=1,
            )
            for context, continuation in map(make_disjoint_window, rolling):
                windows.append([Request(tuple(context), tuple(continuation))])
                owners.append(i)
        options = ScoringOptions(batch_size=self._batch_size, pad_token_id=self._pad_id())
        totals = [0.0] * len(requests)
        scores = score_requests(self.model, windows, options, call=self.call)
        for owner, (score,) in zip(owners, scores, strict=True):
            totals[owner] += score.logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut at the request's `until` strings."""
        out: list[str] = [""] * len(requests)
        settings: dict[tuple[tuple[str, ...], int], list[int]] = {}
        prompts = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            kwargs = dict(gen_kwargs)
            if kwargs.get("do_sample") or (kwargs.get("temperature") or 0) > 0:
                raise ValueError("evalkit generates greedily: do_sample must be false")
            until = kwargs.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            budget = int(kwargs.get("max_gen_toks", 256))
            ids = self.tok_encode(context)[-max(self._window - budget, 1) :]
            prompts.append(ids or [self.eot_token_id])
            settings.setdefault((until, budget), []).append(i)
        for (until, budget), members in settings.items():
            options = GenerationOptions(
                max_new_tokens=budget,
                stop=until,
                batch_size=self._batch_size,
                pad_token_id=self._pad_id(),
            )
            texts = generate_greedy(
                self.model, [prompts[i] for i in members], self.tokenizer, options, call=self.call
            )
            for i, text in zip(members, texts, strict=True):
                out[i] = text
        return out
