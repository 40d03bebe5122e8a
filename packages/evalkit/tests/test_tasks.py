"""Task YAML: every key the shipped files use, each count a task, problems named by file:line."""

from __future__ import annotations

import pytest

from evalkit.tasks import TaskConfig, load_tasks

ALL_KEYS = """\
icl_tasks:
- label: gsm8k
  dataset_uri: symbolic/gsm8k.jsonl
  num_fewshot: [0, 3]
  icl_task_type: generation_task_with_answers
  prompt_string: "Solve:"
  example_delimiter: "\\n\\n"
  continuation_delimiter: "\\n\\nA:"
  question_prelimiter: "Question: "
  cot_delimiter: "The answer is "
  do_normalization: false
  early_stopping_criteria:
  - "\\n\\n"
  - "Question:"
- label: mmlu
  dataset_uri: world/mmlu.jsonl
  num_fewshot: 5
  icl_task_type: multiple_choice
  has_categories: true
"""

BROKEN = """\
icl_tasks:
- label: fine
  dataset_uri: a.jsonl
  icl_task_type: schema
- label: typo
  dataset_uri: b.jsonl
  icl_task_type: multiple_choise
- label: extra
  dataset_uri: c.jsonl
  icl_task_type: language_modeling
  num_fewshots: 3
  batch_size: 4
- label: negative
  dataset_uri: d.jsonl
  icl_task_type: language_modeling
  num_fewshot: [-1]
- label: fine
  dataset_uri: e.jsonl
  icl_task_type: schema
"""


def test_every_shipped_key_is_read(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(ALL_KEYS)
    suite = load_tasks(path)
    assert suite.problems == []
    gsm, mmlu = suite.tasks
    assert gsm.num_fewshot == (0, 3) and [t.name for t in gsm.tasks()] == [
        "gsm8k/0-shot",
        "gsm8k/3-shot",
    ]
    assert (gsm.prompt_string, gsm.example_delimiter, gsm.continuation_delimiter) == (
        "Solve:",
        "\n\n",
        "\n\nA:",
    )
    assert (gsm.question_prelimiter, gsm.cot_delimiter, gsm.do_normalization) == (
        "Question: ",
        "The answer is ",
        False,
    )
    assert gsm.early_stopping_criteria == ("\n\n", "Question:")
    assert mmlu.num_fewshot == (5,) and mmlu.has_categories and mmlu.origin == f"{path}:15"
    # llm-foundry's defaults where the YAML says nothing
    assert (mmlu.example_delimiter, mmlu.continuation_delimiter, mmlu.do_normalization) == (
        "\n",
        " ",
        True,
    )


def test_bad_definitions_are_problems_with_line_and_the_rest_load(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(BROKEN)
    suite = load_tasks(path)
    assert [t.label for t in suite.tasks] == ["fine"]
    problems = {p.task: p for p in suite.problems}
    assert set(problems) == {"typo", "extra", "negative", "fine"}
    assert problems["typo"].location == f"{path}:5"
    assert "unknown icl_task_type 'multiple_choise'" in problems["typo"].message
    assert "unknown key 'batch_size'" in problems["extra"].message
    assert "unknown key 'num_fewshots'" in problems["extra"].message  # every bad key at once
    assert "num_fewshot must be an int >= 0" in problems["negative"].message
    assert (
        problems["fine"].location == f"{path}:17" and "already used at" in problems["fine"].message
    )
    assert str(problems["typo"]).startswith(f"{path}:5: typo: ")


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("icl_tasks:\n- label: x\n  dataset_uri: [unclosed\n")
    with pytest.raises(ValueError, match=rf"{path}:\d+: not valid YAML"):
        load_tasks(path)


def test_python_configs_check_their_fields():
    with pytest.raises(ValueError, match="do_normalization must be.*unknown icl_task_type 'mc'"):
        TaskConfig(label="x", dataset_uri="x", icl_task_type="mc", do_normalization="yes")
    assert TaskConfig(
        label="x", dataset_uri="x", icl_task_type="schema", num_fewshot=[1, 2]
    ).num_fewshot == (1, 2)


def test_selecting_labels_names_unknown_ones(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(ALL_KEYS)
    suite = load_tasks(path).select(["mmlu", "nope"])
    assert [t.label for t in suite.tasks] == ["mmlu"]
    assert [p.task for p in suite.problems] == ["nope"]


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["tasks_seed_table.yaml", "tasks_v0.3.yaml"])
def test_shipped_task_files_load_without_problems(shared_data, name):
    suite = load_tasks(shared_data / "eval" / "yamls" / name)
    assert suite.problems == []
    assert len(suite.tasks) >= 12
    if name == "tasks_seed_table.yaml":
        names = [t.name for c in suite.tasks for t in c.tasks()]
        assert "hellaswag/10-shot" in names and "mmlu/5-shot" in names
        piqa = next(c for c in suite.tasks if c.label == "piqa")
        assert piqa.continuation_delimiter == "\nAnswer: "
