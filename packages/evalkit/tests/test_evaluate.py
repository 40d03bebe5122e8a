"""End to end on synthetic tasks: metrics, categories, and every bad input reported, not dropped."""

from __future__ import annotations

import json

import pytest

from evalkit import EvalConfig, Evaluator, evaluate, markdown
from evalkit.testing import tiny_lm, write_tasks


def test_all_task_types_give_flat_metrics(tasks_yaml, tokenizer):
    model = tiny_lm("packed").train()
    result = evaluate(model, tokenizer, tasks=tasks_yaml)
    assert model.training  # given back in the mode it had
    assert list(result.tasks) == [
        "lm/0-shot",
        "lm/2-shot",
        "mc/1-shot",
        "schema/2-shot",
        "gen/1-shot",
    ]
    assert result.missing_tasks == [] and result.bad_examples == []
    flat = result.metrics()
    for name in (
        "mc/1-shot/acc",
        "mc/1-shot/acc_norm_tokens",
        "mc/1-shot/acc_norm_chars",
        "mc/1-shot/north/acc",
        "mc/1-shot/south/acc_norm_tokens",
        "lm/2-shot/acc",
        "schema/2-shot/acc_norm_tokens",
        "gen/1-shot/acc",
        "mc/1-shot/score",
    ):
        assert 0.0 <= flat[name] <= 1.0, name
    mc = result.tasks["mc/1-shot"]
    north = [e for e in mc.examples if e.category == "north"]
    assert mc.categories["north"]["acc"] == sum(e.correct["acc"] for e in north) / len(north)
    assert (
        mc.score
        == (mc.categories["north"]["acc_norm_tokens"] + mc.categories["south"]["acc_norm_tokens"])
        / 2
    )
    gen = result.tasks["gen/1-shot"]
    assert all(isinstance(e.text, str) and "\n" not in e.text for e in gen.examples)


def test_limit_and_labels(tasks_yaml, tokenizer):
    config = EvalConfig(limit=3, labels=("mc", "gen"))
    result = evaluate(tiny_lm("cache"), tokenizer, tasks=tasks_yaml, config=config)
    assert list(result.tasks) == ["mc/1-shot", "gen/1-shot"]
    assert all(t.n_examples == 3 for t in result.tasks.values())


def test_bad_input_is_reported_with_file_and_line(tmp_path, tokenizer):
    """Item 7: a row missing a field, a gold index outside the choices, a few-shot count larger
    than the dataset, an unknown task type, a missing dataset file, a context with no room for
    the continuation: each reported with file and line, the rest evaluated."""
    rows = [
        {"query": "Q one?", "choices": ["red", "blue"], "gold": 0},
        {"query": "Q two?", "choices": ["red", "blue"]},
        {"query": "Q three?", "choices": ["red", "blue"], "gold": 7},
        {"query": "Q four?", "choices": ["red", " ".join(["long"] * 40)], "gold": 1},
        {"query": "Q five?", "choices": ["green", "blue"], "gold": 1},
    ]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tasks.yaml").write_text(
        "icl_tasks:\n"
        "- {label: mc, dataset_uri: mc.jsonl, icl_task_type: multiple_choice, num_fewshot: [0, 3]}\n"
        "- {label: gone, dataset_uri: missing.jsonl, icl_task_type: schema}\n"
        "- {label: odd, dataset_uri: mc.jsonl, icl_task_type: ranking}\n"
    )
    result = evaluate(
        tiny_lm("packed"),
        tokenizer,
        tasks=tmp_path / "tasks.yaml",
        config=EvalConfig(max_seq_len=24),
    )
    data = tmp_path / "mc.jsonl"
    task = result.tasks["mc/0-shot"]
    assert [e.line for e in task.examples] == [1, 5]
    bad = {i.location: i.message for i in task.bad_examples}
    assert bad[f"{data}:2"] == "'gold' must be an integer index, got nothing (missing)"
    assert bad[f"{data}:3"] == "gold 7 is outside the 2 choices (0..1)"
    assert bad[f"{data}:4"].startswith(
        "no room: a 40-token continuation does not fit the 24-token window"
    )
    missing = {i.task: i for i in result.missing_tasks}
    assert set(missing) == {"mc/3-shot", "gone/0-shot", "odd"}
    assert (
        "num_fewshot 3 is larger than the dataset allows: it has 3 examples"
        in missing["mc/3-shot"].message
    )
    assert missing["gone/0-shot"].location == f"{tmp_path / 'tasks.yaml'}:3"
    assert (
        "cannot read dataset" in missing["gone/0-shot"].message
        and "missing.jsonl" in missing["gone/0-shot"].message
    )
    assert missing["odd"].location == f"{tmp_path / 'tasks.yaml'}:4"
    assert "unknown icl_task_type 'ranking'" in missing["odd"].message
    report = markdown([result])
    for where in (f"{data}:2", f"{data}:3", f"{data}:4", f"{tmp_path / 'tasks.yaml'}:3"):
        assert where in report


def test_an_evaluator_prepares_once_and_evaluates_many_models(tasks_yaml, tokenizer):
    evaluator = Evaluator(tokenizer, tasks_yaml, config=EvalConfig(limit=4))
    a, b = (
        evaluator.metrics(tiny_lm("packed", seed=0)),
        evaluator.metrics(tiny_lm("packed", seed=1)),
    )
    assert a.keys() == b.keys() and a != b
    assert evaluator.metrics(tiny_lm("cache", seed=0)) == pytest.approx(a)


def test_datasets_on_an_object_store(s3_bucket, tmp_path, tokenizer):
    from streaming.storage import upload_file

    local = write_tasks(tmp_path / "local", n=6).parent
    upload_file(str(local / "schema.jsonl"), f"{s3_bucket}/icl/schema.jsonl")
    (tmp_path / "t.yaml").write_text(
        "icl_tasks:\n- {label: schema, dataset_uri: schema.jsonl, icl_task_type: schema}\n"
    )
    remote = evaluate(
        tiny_lm("packed"), tokenizer, tasks=tmp_path / "t.yaml", data_root=f"{s3_bucket}/icl"
    )
    here = evaluate(tiny_lm("packed"), tokenizer, tasks=tmp_path / "t.yaml", data_root=local)
    assert remote.tasks["schema/0-shot"].dataset == f"{s3_bucket}/icl/schema.jsonl"
    assert remote.tasks["schema/0-shot"].metrics == here.tasks["schema/0-shot"].metrics
    gone = evaluate(
        tiny_lm("packed"), tokenizer, tasks=tmp_path / "t.yaml", data_root=f"{s3_bucket}/nowhere"
    )
    assert gone.tasks == {} and "s3://" in gone.missing_tasks[0].message


def test_a_model_without_a_window_needs_max_seq_len(tasks_yaml, tokenizer):
    model = tiny_lm("plain")
    del model.config
    with pytest.raises(ValueError, match=r"declares no context window .*max_seq_len"):
        evaluate(model, tokenizer, tasks=tasks_yaml)
    assert evaluate(
        model, tokenizer, tasks=tasks_yaml, config=EvalConfig(max_seq_len=128, limit=2)
    ).tasks


def test_nothing_to_score_or_continue_is_a_bad_example(tmp_path, tokenizer):
    (tmp_path / "lm.jsonl").write_text(
        '{"context": "a b", "continuation": "c"}\n{"context": "a b", "continuation": "  "}\n'
    )
    (tmp_path / "gen.jsonl").write_text(
        '{"context": "", "answer": "x"}\n{"context": "Q: a?", "answer": "x"}\n'
    )
    (tmp_path / "t.yaml").write_text(
        "icl_tasks:\n- {label: lm, dataset_uri: lm.jsonl, icl_task_type: language_modeling}\n"
        "- {label: gen, dataset_uri: gen.jsonl, icl_task_type: generation_task_with_answers, max_new_tokens: 2}\n"
    )
    result = evaluate(tiny_lm("cache"), tokenizer, tasks=tmp_path / "t.yaml")
    lm, gen = result.tasks["lm/0-shot"], result.tasks["gen/0-shot"]
    assert [e.line for e in lm.examples] == [1] and [e.line for e in gen.examples] == [2]
    assert [(i.location, i.message) for i in lm.bad_examples] == [
        (f"{tmp_path / 'lm.jsonl'}:2", "'continuation' is empty: nothing to score")
    ]
    assert gen.bad_examples[0].message == "the prompt encodes to no tokens (nothing to continue)"
