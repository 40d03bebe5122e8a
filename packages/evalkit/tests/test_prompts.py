"""Rows, few-shot draws and the exact text of every request, per task type."""

from __future__ import annotations

import json

import pytest

from evalkit.data import Example, parse_rows
from evalkit.prompts import fewshot_indices, fix_pair, render
from evalkit.task_types import TASK_TYPES, Evidence, normalize_answer
from evalkit.tasks import TaskConfig


def config(kind: str, **kw) -> TaskConfig:
    return TaskConfig(label="t", dataset_uri="t.jsonl", icl_task_type=kind, **kw)


def test_bad_rows_are_named_by_line_and_the_rest_parse():
    lines = [
        json.dumps({"query": "Q1", "choices": ["a", "b"], "gold": 1}),
        json.dumps({"query": "Q2", "choices": ["a", "b"]}),
        json.dumps({"query": "Q3", "choices": ["a", "b"], "gold": 2}),
        '{"query": "Q4", "choices": ["a"',
        "",
        json.dumps({"query": 5, "choices": "ab", "gold": True}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"query": "  Q7  ", "choices": ["x", "y"], "gold": 0}),
    ]
    examples, bad = parse_rows(lines, "f.jsonl", "multiple_choice", task="t")
    assert [(e.line, e.contexts[0], e.gold) for e in examples] == [(1, "Q1", 1), (8, "Q7", 0)]
    found = {issue.location: issue.message for issue in bad}
    assert found["f.jsonl:2"] == "'gold' must be an integer index, got nothing (missing)"
    assert found["f.jsonl:3"] == "gold 2 is outside the 2 choices (0..1)"
    assert found["f.jsonl:4"].startswith("not valid JSON")
    assert "'choices' must be a list of strings" in found["f.jsonl:6"]
    assert "'query' must be a string" in found["f.jsonl:6"]  # every problem of a row at once
    assert "a row is a JSON object" in found["f.jsonl:7"]
    assert set(found) == {"f.jsonl:2", "f.jsonl:3", "f.jsonl:4", "f.jsonl:6", "f.jsonl:7"}


def test_categories_are_required_when_the_task_has_them():
    lines = [json.dumps({"context": "c", "continuation": "x"})]
    _, bad = parse_rows(lines, "f.jsonl", "language_modeling", task="t", has_categories=True)
    assert "'category' must be a string" in bad[0].message


def test_fewshot_draws_are_seeded_by_example_and_never_the_example_itself():
    for position in range(10):
        picks = fewshot_indices(1234, position, 10, 5)
        assert len(set(picks)) == 5 and position not in picks
        assert picks == fewshot_indices(1234, position, 10, 5)
    assert fewshot_indices(1234, 3, 10, 5) != fewshot_indices(99, 3, 10, 5)
    with pytest.raises(ValueError, match="num_fewshot 10 needs 10 other examples; there are 9"):
        fewshot_indices(1, 0, 10, 10)


def test_whitespace_moves_into_the_continuation_and_words_get_their_space():
    assert fix_pair("Answer: ", "Paris", prefix_space=True) == ("Answer:", " Paris")
    assert fix_pair("Answer:\n", "Paris", prefix_space=True) == ("Answer:", "\nParis")
    assert fix_pair("Answer:", "Paris", prefix_space=True) == ("Answer:", " Paris")
    assert fix_pair("Answer:", "Paris", prefix_space=False) == ("Answer:", "Paris")


def test_multiple_choice_layout_with_fewshot():
    rows = [
        Example(line=i, contexts=(f"Q{i}?",), continuations=("yes", "no"), gold=i % 2)
        for i in range(3)
    ]
    cfg = config(
        "multiple_choice",
        continuation_delimiter="\nAnswer: ",
        prompt_string="Quiz",
        question_prelimiter="> ",
        num_fewshot=1,
    )
    prompts = render(cfg, rows, 1, prefix_space=True)
    shot = rows[fewshot_indices(1234, 0, 3, 1)[0]]
    expected = (
        f"Quiz\n> {shot.contexts[0]}\nAnswer: {shot.continuations[shot.gold]}\n> Q0?\nAnswer:"
    )
    assert prompts[0].pairs == ((expected, " yes"), (expected, " no"))


def test_language_modeling_schema_and_generation_layouts():
    lm = [Example(line=1, contexts=("2 + 2 =",), continuations=("4",))]
    assert render(config("language_modeling"), lm, 0, prefix_space=True)[0].pairs == (
        ("2 + 2 =", " 4"),
    )
    schema = [
        Example(
            line=1,
            contexts=("Anna fed Bo so Anna", "Anna fed Bo so Bo"),
            continuations=("was full.",),
            gold=1,
        )
    ]
    pairs = render(config("schema"), schema, 0, prefix_space=True)[0].pairs
    assert pairs == (("Anna fed Bo so Anna", " was full."), ("Anna fed Bo so Bo", " was full."))
    gen = [
        Example(line=i, contexts=(f"Q{i}",), answers=(f"A{i}",), chain_of_thought=f"because {i}")
        for i in range(2)
    ]
    cfg = config(
        "generation_task_with_answers", continuation_delimiter="\nA: ", cot_delimiter=" so "
    )
    prompt = render(cfg, gen, 1, prefix_space=True)[0].generation
    assert prompt == "Q1\nA: because 1 so A1\nQ0\nA:"


def test_fewshot_stays_within_a_category_and_too_few_examples_is_an_error():
    rows = [
        Example(line=i, contexts=(f"q{i}",), continuations=("a", "b"), category="xy"[i % 2])
        for i in range(6)
    ]
    cfg = config("multiple_choice", has_categories=True)
    for prompt, row in zip(render(cfg, rows, 2, prefix_space=True), rows, strict=True):
        shots = [f"q{i}" for i in range(6) if f"q{i} " in prompt.pairs[0][0] + " "]
        assert all(int(s[1:]) % 2 == int(row.contexts[0][1:]) % 2 for s in shots)
    with pytest.raises(ValueError, match="category 'x' allows: it has 3 examples"):
        render(cfg, rows, 3, prefix_space=True)


def test_limit_renders_the_first_examples_with_draws_from_all():
    rows = [Example(line=i, contexts=(f"q{i}",), continuations=("c",)) for i in range(8)]
    cfg = config("language_modeling")
    assert (
        render(cfg, rows, 3, prefix_space=True, limit=2)
        == render(cfg, rows, 3, prefix_space=True)[:2]
    )


@pytest.mark.parametrize(
    ("text", "answers", "cot", "normalize", "correct"),
    [
        (" The Eiffel Tower!", ("eiffel tower",), "", True, True),
        ("Paris, France", ("Lima", "paris"), "", True, True),
        ("Rome", ("Paris",), "", True, False),
        ("Janet sells 9 eggs. The answer is 18", ("18",), "The answer is ", False, True),
        (" 18", ("18",), "", False, True),
        ("the answer", ("",), "", True, False),
    ],
)
def test_generation_verdicts(text, answers, cot, normalize, correct):
    cfg = config("generation_task_with_answers", cot_delimiter=cot, do_normalization=normalize)
    example = Example(line=1, contexts=("q",), answers=answers)
    outcome = TASK_TYPES[cfg.icl_task_type].judge(Evidence(cfg, example, None, text=text))
    assert outcome.correct == {"acc": correct}
    assert normalize_answer("The  Cat_Sat, an apple!") == "cat sat apple"
