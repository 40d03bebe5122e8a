"""The `foundry` command and its config groups: help, composition, overrides, errors."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from foundry import cli
from foundry.compose import CONFIG_DIR, command_groups, compose_config, group_options
from foundry.schema import (
    DataMixCommand,
    DataPrepCommand,
    HardwareConfig,
    OptimizerConfig,
    SchedulerConfig,
)
from foundry.validate import ConfigError, build
from mpt.presets import PRESETS, preset

HARDWARE = [
    "cpu",
    "1xh100",
    "1xh200",
    "2xh100",
    "4xh100",
    "8xh100",
    "8xh200",
    "512xh100",
    "8xa100_40gb",
    "8xa100_80gb",
    "256xa100_40gb",
    "440xa100_40gb",
    "512xa100_40gb",
]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "foundry", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_help_lists_commands_and_groups(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out
    for group in ("model", "hardware", "data", "optimizer", "scheduler"):
        assert f"  {group} " in out
    assert "mpt_30b" in out and "mpt_tiny" in out and "512xh100" in out


def test_command_help_lists_options_with_defaults(capsys):
    assert cli.main(["data", "prep", "--help"]) == 0
    out = capsys.readouterr().out
    assert "max_seq_len: int = 2048" in out
    assert "dedup.threshold: float = 0.8" in out
    assert "inputs: list[str] = ???" in out
    assert "model (default: none): mpt_125m" in out
    assert cli.main(["data", "--help"]) == 0
    assert "foundry data prep" in capsys.readouterr().out


def test_unknown_command_suggests_the_closest(capsys):
    assert cli.main(["dta", "prep"]) == 2
    assert "did you mean 'foundry data prep'?" in capsys.readouterr().err


def test_python_dash_m_and_console_script_entry(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0 and "tokenizer train" in result.stdout
    meta = tomllib.loads((Path(cli.__file__).parents[2] / "pyproject.toml").read_text())
    assert meta["project"]["scripts"] == {"foundry": "foundry.cli:main"}


def test_every_command_has_its_config_and_schema():
    for command in cli.COMMANDS.values():
        assert (CONFIG_DIR / f"{command.config}.yaml").is_file()
        assert command.schema.__dataclass_params__.frozen


def test_model_group_holds_every_mpt_preset_and_tiny():
    assert set(group_options("model")) == set(PRESETS) | {"mpt_tiny"}
    base = ["inputs=[x]", "out=o", "tokenizer=t"]
    for name in PRESETS:
        cfg = compose_config("data_prep", [*base, f"model={name}"]).build(DataPrepCommand)
        assert cfg.model == preset(name)
    tiny = compose_config("data_prep", [*base, "model=mpt_tiny", "model.n_layers=3"])
    assert tiny.build(DataPrepCommand).model.n_layers == 3


@pytest.mark.parametrize("name", HARDWARE)
def test_hardware_entries(name):
    from omegaconf import OmegaConf

    assert name in group_options("hardware")
    data = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "hardware" / f"{name}.yaml"))
    hw = build(HardwareConfig, data)
    text = (CONFIG_DIR / "hardware" / f"{name}.yaml").read_text()
    if hw.gpu == "cpu":
        assert hw.peak_bf16_flops is None
    else:
        assert "Price:" in text and "Peak:" in text, "price and peak need a stated source"
        assert hw.peak_bf16_flops == {"H100-SXM": 989.5e12, "H200": 989.5e12}.get(hw.gpu, 312e12)
    count = int(name.split("x")[0]) if name != "cpu" else 1
    assert hw.world_size == count


def test_optimizer_and_scheduler_groups_build():
    from omegaconf import OmegaConf

    names = {}
    for group, schema in (("optimizer", OptimizerConfig), ("scheduler", SchedulerConfig)):
        for option in group_options(group):
            data = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / group / f"{option}.yaml"))
            names[option] = build(schema, data).name
    assert names == {
        "adamw": "adamw",
        "decoupled_adamw": "decoupled_adamw",
        "lion": "lion",
        "cosine_with_warmup": "cosine",
        "linear": "linear",
        "constant": "constant",
    }


def test_all_config_problems_in_one_error_with_where_they_were_set():
    composed = compose_config(
        "data_prep",
        [
            "model=mpt_tiny",
            "inputs=[a]",
            "out=o",
            "max_seq_len=abc",
            "dedup.treshold=0.5",
            "model.d_modle=4",
        ],
    )
    with pytest.raises(ConfigError) as caught:
        composed.build(DataPrepCommand)
    lines = (CONFIG_DIR / "data_prep.yaml").read_text().splitlines()
    line = lines.index("tokenizer: ???") + 1
    assert sorted(caught.value.problems) == sorted(
        [
            "tokenizer: required, but not set (give it on the command line: tokenizer=...) "
            f"(foundry/configs/data_prep.yaml:{line})",
            "max_seq_len: expected int, got str 'abc' (command line 'max_seq_len=abc')",
            "dedup.treshold: unknown key; did you mean 'threshold'? (command line 'dedup.treshold=0.5')",
            "model.d_modle: unknown key; did you mean 'd_model'? (command line 'model.d_modle=4')",
        ]
    )


def test_bad_group_options_and_overrides_are_listed_together():
    with pytest.raises(ConfigError) as caught:
        compose_config("data_prep", ["model=mpt_7bb", "hardware=cpu", "x=[a", "oops"])
    problems = caught.value.problems
    assert len(problems) == 4
    assert any("did you mean 'mpt_7b'" in p for p in problems)
    assert any("no 'hardware' group" in p for p in problems)
    assert any(p.startswith("cannot parse 'x=[a'") for p in problems)
    assert any("'oops' is not an override" in p for p in problems)


def test_cli_reports_config_errors_with_exit_2(capsys):
    args = ["inputs=[a]", "out=o", "tokenizer=t", "num_prc=2", "filters.min_word=3"]
    assert cli.main(["data", "prep", *args]) == 2
    err = capsys.readouterr().err
    assert "2 problems in data_prep config" in err
    assert "num_prc: unknown key; did you mean 'num_proc'?" in err
    assert "filters.min_word: unknown key; did you mean 'min_words'?" in err


def test_data_mix_prints_mpt_7b_table():
    composed = compose_config("data_mix", ["tokens=1T"])
    assert command_groups("data_mix") == {"data": "mpt_7b"}
    cfg = composed.build(DataMixCommand)
    from foundry.data.mix import mix_table

    rows = {r.name: r for r in mix_table(cfg.data, tokens=10**12)}
    # the announcement's epochs: effective tokens / tokens in the source
    assert rows["c4_en_semdedup"].epochs == pytest.approx(299 / 100.42)
    assert rows["redpajama_wikipedia"].epochs == pytest.approx(40 / 4.87)
    assert rows["mc4_en"].tokens == pytest.approx(330e9)
    assert sum(r.share for r in rows.values()) == pytest.approx(1.0)


def test_bare_words_after_report_are_its_runs_even_with_spaces_and_quotes():
    from foundry.cli import COMMANDS, _as_list_override
    from foundry.compose import compose_config
    from foundry.report import ReportCommand

    assert COMMANDS["report"].positional == "runs"
    runs = ["runs/a", "my runs/b c", "it's\\here", "C:\\x\\", "a\\'b"]
    override = _as_list_override("runs", runs)
    cfg = compose_config("report", [override, "out=x.png"]).build(ReportCommand)
    assert list(cfg.runs) == runs
