"""lm-eval interop: our tasks as lm-eval YAML (offline, local json), and evalkit as lm-eval's
"evalkit" model, which gives through lm-eval the scores evalkit gives alone."""

from __future__ import annotations

import pytest
import yaml

from evalkit import evaluate
from evalkit.lm_eval_tasks import write_lm_eval_tasks
from evalkit.testing import WordTokenizer, tiny_lm

lm_eval = pytest.importorskip("lm_eval")


def run_lm_eval(model_args, names, folder, **kwargs):
    from lm_eval.tasks import TaskManager

    import evalkit.lm_eval  # noqa: F401 (registers "evalkit" with lm-eval)

    manager = TaskManager(include_path=str(folder), include_defaults=False)
    return lm_eval.simple_evaluate(
        model="evalkit",
        model_args=model_args,
        tasks=list(names.values()),
        task_manager=manager,
        log_samples=True,
        bootstrap_iters=0,  # no stderr is compared: skip lm-eval's bootstrap (a process pool)
        **kwargs,
    )


def test_translated_tasks_read_local_json(tasks_yaml, tmp_path, tokenizer):
    names, problems = write_lm_eval_tasks(tasks_yaml, tmp_path / "lm", tokenizer=tokenizer)
    assert problems == []
    assert names == {
        "lm/0-shot": "evalkit_lm_0shot",
        "lm/2-shot": "evalkit_lm_2shot",
        "mc/1-shot": "evalkit_mc_1shot",
        "schema/2-shot": "evalkit_schema_2shot",
        "gen/1-shot": "evalkit_gen_1shot",
    }
    spec = yaml.safe_load((tmp_path / "lm" / "evalkit_mc_1shot.yaml").read_text())
    assert spec["dataset_path"] == "json" and spec["output_type"] == "multiple_choice"
    assert spec["dataset_kwargs"]["data_files"]["test"] == str(
        (tmp_path / "lm" / "evalkit_mc_1shot.jsonl").resolve()
    )
    text = (tmp_path / "lm" / "evalkit_gen_1shot.yaml").read_text()
    assert "process_results: !function evalkit_lm_eval_utils.process_generation" in text


def test_lm_eval_with_the_evalkit_model_scores_like_evalkit(tasks_yaml, tmp_path):
    tok = WordTokenizer()
    names, _ = write_lm_eval_tasks(tasks_yaml, tmp_path / "lm", tokenizer=tok)
    ours = evaluate(tiny_lm("packed"), tok, tasks=tasks_yaml)
    out = run_lm_eval(
        {"model": tiny_lm("packed"), "tokenizer": tok, "batch_size": 4}, names, tmp_path / "lm"
    )
    for name, lm_name in names.items():
        theirs, task = out["results"][lm_name], ours.tasks[name]
        assert theirs["acc,none"] == pytest.approx(task.metrics["acc"]), name
        if "acc_norm_chars" in task.metrics:
            assert theirs["acc_norm,none"] == pytest.approx(task.metrics["acc_norm_chars"]), name
        samples = sorted(out["samples"][lm_name], key=lambda s: s["doc_id"])
        for sample, example in zip(samples, task.examples, strict=True):
            if example.text is not None:
                assert sample["filtered_resps"][0] == example.text
            else:
                got = [r[0] for r in sample["filtered_resps"]]
                assert got == pytest.approx(example.logprobs, abs=1e-5)


def test_registering_evalkit_keeps_lm_eval_own_models():
    from lm_eval.api.registry import get_model

    import evalkit.lm_eval

    assert get_model("evalkit") is evalkit.lm_eval.EvalkitLM
    assert get_model("hf").__name__ == "HFLM"


def test_rolling_loglikelihood_is_the_sum_over_windows():
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    import evalkit.lm_eval as adapter

    tok = WordTokenizer()
    lm = adapter.EvalkitLM(model=tiny_lm("packed"), tokenizer=tok, max_length=8)
    text = "the red cat sleeps by the old river and the small dog sings"
    (total,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    windows = get_rolling_token_windows(
        token_list=tok.encode(text), prefix_token=0, max_seq_len=8, context_len=1
    )
    model, want, count = tiny_lm("plain"), 0.0, 0
    with torch.no_grad():
        for context, continuation in map(make_disjoint_window, windows):
            ids = list(context) + list(continuation)
            lp = torch.log_softmax(model(torch.tensor([ids[:-1]])).double()[0], -1)
            rows = lp[len(context) - 1 :]
            want += rows.gather(1, torch.tensor(continuation)[:, None]).sum().item()
            count += len(continuation)
    assert count == len(tok.encode(text)) and total == pytest.approx(want, abs=1e-5)
