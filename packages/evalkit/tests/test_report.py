"""The gauntlet's arithmetic, the markdown and JSON reports, the chart, and `compare`."""

from __future__ import annotations

import io
import json
import math

import pytest

from evalkit import EvalResults, TaskResult, compare, load_gauntlet, markdown, score_gauntlet
from evalkit.report import plot
from evalkit.results import NearTie
from evalkit.tasks import Issue

GAUNTLET = """\
eval_gauntlet:
  weighting: {weighting}
  subtract_random_baseline: true
  rescale_accuracy: true
  averages:
    core_average: [knowledge, reasoning]
  categories:
  - name: knowledge
    benchmarks:
    - {{name: quiz, num_fewshot: 3, random_baseline: 0.25}}
    - {{name: facts, num_fewshot: 0, random_baseline: 0.0}}
  - name: reasoning
    benchmarks:
    - {{name: puzzle, num_fewshot: 5, random_baseline: 0.5}}
    - {{name: absent, num_fewshot: 0, random_baseline: 0.5}}
"""


def task(name: str, value: float, n: int = 100, categories=None) -> TaskResult:
    label, shots = name.split("/")
    return TaskResult(
        name=name,
        label=label,
        num_fewshot=int(shots.split("-")[0]),
        task_type="multiple_choice",
        dataset=f"{label}.jsonl",
        primary="acc_norm_tokens",
        metrics={"acc_norm_tokens": value},
        n_examples=n,
        categories=categories or {},
    )


def results(model: str, quiz=0.55, facts=0.4, puzzle=0.7) -> EvalResults:
    return EvalResults(
        model=model,
        tasks={
            "quiz/3-shot": task("quiz/3-shot", quiz, 400),
            "facts/0-shot": task("facts/0-shot", facts, 100),
            "puzzle/5-shot": task("puzzle/5-shot", puzzle),
        },
        missing_tasks=[Issue("absent/0-shot", "tasks.yaml:9", "cannot read dataset absent.jsonl")],
    )


def gauntlet(tmp_path, weighting="EQUAL"):
    path = tmp_path / "g.yaml"
    path.write_text(GAUNTLET.format(weighting=weighting))
    return load_gauntlet(path)


def test_baselines_are_subtracted_rescaled_and_averaged(tmp_path):
    scores = score_gauntlet(gauntlet(tmp_path), results("m"))
    quiz, facts, puzzle = (0.55 - 0.25) / 0.75, 0.4, (0.7 - 0.5) / 0.5
    assert scores.benchmarks == pytest.approx(
        {"quiz/3-shot": quiz, "facts/0-shot": facts, "puzzle/5-shot": puzzle}
    )
    assert scores.categories == pytest.approx(
        {"knowledge": (quiz + facts) / 2, "reasoning": puzzle}
    )
    assert scores.averages == pytest.approx({"core_average": ((quiz + facts) / 2 + puzzle) / 2})
    assert scores.missing == {"reasoning": ["absent/0-shot"]}
    strict = score_gauntlet(
        gauntlet(tmp_path), results("m"), on_missing="drop"
    )  # llm-foundry's rule
    assert "reasoning" not in strict.categories and strict.averages[
        "core_average"
    ] == pytest.approx((quiz + facts) / 2)


@pytest.mark.parametrize(
    ("weighting", "wq", "wf"),
    [("SAMPLE_SZ", 400, 100), ("LOG_SAMPLE_SZ", math.log2(400), math.log2(100))],
)
def test_weightings(tmp_path, weighting, wq, wf):
    scores = score_gauntlet(gauntlet(tmp_path, weighting), results("m"))
    quiz, facts = (0.55 - 0.25) / 0.75, 0.4
    assert scores.categories["knowledge"] == pytest.approx((quiz * wq + facts * wf) / (wq + wf))


def test_a_task_with_categories_scores_their_mean():
    t = task(
        "mmlu/5-shot",
        0.9,
        categories={"law": {"acc_norm_tokens": 0.2}, "art": {"acc_norm_tokens": 0.6}},
    )
    assert t.score == pytest.approx(0.4)


def test_bad_gauntlet_files_are_named(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        "eval_gauntlet:\n  weighting: MEDIAN\n  categories:\n  - name: x\n    benchmarks: [{name: a}]\n"
    )
    with pytest.raises(ValueError, match=rf"{path}:4: a category needs a name and benchmarks"):
        load_gauntlet(path)
    path.write_text("eval_gauntlet:\n  weighting: MEDIAN\n  categories: []\n")
    with pytest.raises(ValueError, match="weighting 'MEDIAN'"):
        load_gauntlet(path)


def test_markdown_lists_tasks_models_categories_and_problems(tmp_path):
    a, b = results("alpha"), results("beta", quiz=0.7)
    a.tasks["quiz/3-shot"].near_ties.append(NearTie("quiz/3-shot", "quiz.jsonl:7", "acc", 3e-6))
    text = markdown([a, b], gauntlet=gauntlet(tmp_path))
    assert "| task | type | metric | examples | alpha | beta |" in text
    assert "| quiz/3-shot | multiple_choice | acc_norm_tokens | 400 | 0.5500 | 0.7000 |" in text
    assert "| reasoning (benchmarks not run: 1) | 0.4000 | 0.4000 |" in text
    assert "| **core_average** |" in text
    a.tasks.pop("puzzle/5-shot")  # a category with no benchmark run: listed, not averaged
    text = markdown([a], gauntlet=gauntlet(tmp_path))
    assert "| reasoning (benchmarks not run: 2) | – |" in text
    assert "| **core_average** (over 1 of 2 categories) |" in text
    assert "tasks.yaml:9: absent/0-shot: cannot read dataset absent.jsonl" in text
    assert "quiz.jsonl:7: quiz/3-shot: acc near tie (difference +3.00e-06)" in text


def test_json_round_trip_and_unknown_versions(tmp_path):
    a = results("alpha")
    a.save(tmp_path / "a.json")
    back = EvalResults.load(tmp_path / "a.json")
    assert back == a and back.metrics() == a.metrics()
    data = json.loads((tmp_path / "a.json").read_text())
    data["version"] = 2
    (tmp_path / "b.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not an evalkit-results v1 file .*version=2"):
        EvalResults.load(tmp_path / "b.json")


def test_compare_prints_two_results_side_by_side(tmp_path):
    results("alpha").save(tmp_path / "a.json")
    out = io.StringIO()
    text = compare(
        tmp_path / "a.json", results("beta", quiz=0.7), gauntlet=gauntlet(tmp_path), file=out
    )
    assert out.getvalue() == text
    assert "| task | alpha | beta | difference |" in text
    assert "| quiz/3-shot | 0.5500 | 0.7000 | +0.1500 |" in text
    assert "| gauntlet/core_average |" in text


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot(
        [results("alpha"), results("beta")], tmp_path / "g.png", gauntlet=gauntlet(tmp_path)
    )
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.endswith("g.png")
