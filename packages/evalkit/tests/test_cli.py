"""`python -m evalkit`: --help, a run from a model factory with its files, `compare`, errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from evalkit.cli import main
from evalkit.loading import import_factory

FACTORY = """\
import torch

from evalkit.testing import WordTokenizer, tiny_lm


def build():
    return tiny_lm("packed"), WordTokenizer()


def model_only():
    return tiny_lm("packed")


def bf16_model():
    return tiny_lm("packed").to(torch.bfloat16)
"""

GAUNTLET = """\
eval_gauntlet:
  weighting: EQUAL
  subtract_random_baseline: true
  rescale_accuracy: true
  averages: {core: [all]}
  categories:
  - name: all
    benchmarks:
    - {name: mc, num_fewshot: 1, random_baseline: 0.33}
    - {name: schema, num_fewshot: 2, random_baseline: 0.5}
"""


@pytest.fixture
def factory(tmp_path, monkeypatch):
    (tmp_path / "evalkit_cli_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "evalkit_cli_factory"


def test_a_factory_model_keeps_its_dtype_unless_one_is_asked_for(factory):
    """--dtype auto (the default) leaves a factory's model in the dtype it was made in (a bf16
    model evaluated in fp32 on a GPU ran 2x slower, unnoticed); a named dtype casts; a bad name
    is refused before the factory runs."""
    from evalkit.loading import load_model

    kept, _ = load_model(factory=f"{factory}:bf16_model")
    assert next(kept.parameters()).dtype == torch.bfloat16
    cast, _ = load_model(factory=f"{factory}:bf16_model", dtype="fp32")
    assert next(cast.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="dtype must be auto or one of"):
        load_model(factory=f"{factory}:bf16_model", dtype="fp64")


def test_help_explains_the_options(capsys, monkeypatch):
    # In this process (`python -m evalkit` itself runs in the torchrun test below); 80 columns,
    # the width argparse wraps to in a process without a terminal.
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for words in (
        "--model-factory MODULE:FUNCTION",
        "--gauntlet YAML",
        "--data-root",
        "compare A.json B.json",
        "--sharing",
        "torchrun",
    ):
        assert words in out


def test_a_run_writes_the_report_and_compare_reads_it(factory, tasks_yaml, tmp_path, capsys):
    (tmp_path / "g.yaml").write_text(GAUNTLET)
    out = tmp_path / "out"
    code = main(
        [
            "--model-factory",
            f"{factory}:build",
            "--tasks",
            str(tasks_yaml),
            "--gauntlet",
            str(tmp_path / "g.yaml"),
            "--limit",
            "3",
            "--out",
            str(out),
            "--no-progress",
            "--name",
            "tiny",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| task | type | metric | examples | tiny |" in printed and "| **core** |" in printed
    assert {p.name for p in out.iterdir()} >= {"results.json", "report.md"}
    assert (out / "report.md").read_text() in printed
    pytest.importorskip("matplotlib")
    assert (out / "gauntlet.png").is_file()
    assert main(["compare", str(out / "results.json"), str(out / "results.json")]) == 0
    assert "| mc/1-shot | " in capsys.readouterr().out


def test_mistakes_are_explained(factory, tasks_yaml, capsys):
    with pytest.raises(SystemExit):
        main(["--tasks", str(tasks_yaml)])
    assert "give a model folder or --model-factory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(
            [
                "--model-factory",
                f"{factory}:model_only",
                "--tasks",
                str(tasks_yaml),
                "--no-progress",
            ]
        )
    assert "returned no tokenizer: give --tokenizer" in capsys.readouterr().err
    with pytest.raises(ValueError, match="a model factory is 'module:function'"):
        import_factory("no_colon")
    with pytest.raises(ValueError, match="has no function 'nothing'"):
        import_factory(f"{factory}:nothing")


@pytest.mark.distributed
def test_the_command_under_torchrun_gives_what_one_process_gives(factory, tasks_yaml, tmp_path):
    import json
    import os

    import torch

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]),
        "OMP_NUM_THREADS": "1",
    }
    args = [
        "--model-factory",
        f"{factory}:build",
        "--tasks",
        str(tasks_yaml),
        "--limit",
        "5",
        "--no-progress",
        "--device",
        "cpu",
    ]
    from streaming.testing.distributed import free_port

    rendezvous = ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", *rendezvous]
    two = subprocess.run(
        [*torchrun, "-m", "evalkit", *args, "--out", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("| task | type |") == 1  # rank 0 alone prints
    # One process: the same command in this one, with one thread like the torchrun ranks.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*args, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("two", "one"))
    assert {n: t["metrics"] for n, t in a["tasks"].items()} == {
        n: t["metrics"] for n, t in b["tasks"].items()
    }


def test_auto_dtype_is_bf16_on_a_gpu_and_fp32_on_a_cpu():
    """What `--dtype auto` (and `foundry eval`'s dtype=auto) gives a Hugging Face folder."""
    from evalkit.hf import resolve_dtype

    assert resolve_dtype("auto", "cuda") == resolve_dtype("auto", "cuda:1") == "bf16"
    assert resolve_dtype("auto", "cpu") == "fp32" and resolve_dtype("fp16", "cpu") == "fp16"
    with pytest.raises(ValueError, match="dtype must be auto or one of"):
        resolve_dtype("float32", "cpu")
