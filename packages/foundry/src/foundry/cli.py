"""The `foundry` command: a small dispatcher over commands, each a Hydra-composed config.

    foundry <command> [group=option ...] [key=value ...]
    foundry --help | foundry <command> --help

A command is one `Command` entry in `COMMANDS`: its name (one or two words), a summary, its
primary config (`configs/<config>.yaml`), the schema its composed config is checked against, and
the function that runs it with the checked config and the resolved config's YAML (which the
dispatcher prints first and each command saves beside its outputs). Adding `train` is one entry.

Exit status: 0 done; 2 the command line or the config is wrong (every problem listed at once);
1 the command could not do its work (a missing input, an output that exists, ...), with a
message that says what to change.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from foundry import (
    convert,
    evaluation,
    finetune,
    generate_command,
    launch_draft,
    plan,
    report,
    schema,
    sweep,
    tokenizer,
    train,
)
from foundry.compose import Composed
from foundry.data import finetune_prep, mix, prep
from foundry.validate import ConfigError

__all__ = ["COMMANDS", "Command", "main"]


@dataclass(frozen=True, kw_only=True)
class Command:
    """One `foundry` command."""

    name: str
    summary: str
    config: str
    schema: type
    run: Callable[[Any, str], int]
    positional: str | None = None  # the list key that bare words after the name fill, if any
    # what the command makes of a config its schema refuses: an exit status, or None to report
    # the problems (train, finetune: a draft launch, and train's plan, when only run settings
    # are unset)
    incomplete: Callable[[Composed, ConfigError], int | None] | None = None


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            name="data prep",
            summary="text/jsonl (local or s3://) -> filtered, deduplicated, tokenized MDS shards",
            config="data_prep",
            schema=schema.DataPrepCommand,
            run=prep.run_command,
        ),
        Command(
            name="data finetune",
            summary="prompt/response and chat jsonl -> finetuning MDS (labels, chat template, packing)",
            config="data_finetune",
            schema=finetune_prep.FinetuneDataCommand,
            run=finetune_prep.run_command,
        ),
        Command(
            name="data mix",
            summary="a data mix's table for a token budget: share, tokens, epochs per source",
            config="data_mix",
            schema=schema.DataMixCommand,
            run=mix.run_command,
        ),
        Command(
            name="train",
            summary="pretrain an MPT on prepared MDS data (torchrun for several processes)",
            config="train",
            schema=schema.TrainCommand,
            run=train.run_command,
            incomplete=launch_draft.draft_launch,
        ),
        Command(
            name="eval",
            summary="evalkit's ICL tasks and the gauntlet on checkpoints (ours or HF MPT folders)",
            config="eval",
            schema=evaluation.EvalCommand,
            run=evaluation.run_command,
        ),
        Command(
            name="report",
            summary="loss, learning-rate and throughput curves of runs (their JSONL) as a PNG",
            config="report",
            schema=report.ReportCommand,
            run=report.run_command,
            positional="runs",
        ),
        Command(
            name="plan",
            summary="a run's arithmetic: parameters, FLOPs, memory per GPU, tokens/s, days, cost",
            config="plan",
            schema=plan.PlanCommand,
            run=plan.run_command,
        ),
        Command(
            name="finetune",
            summary="finetune a pretrained MPT (ours or HF) on finetuning MDS, loss on responses",
            config="finetune",
            schema=finetune.FinetuneCommand,
            run=finetune.run_command,
            incomplete=launch_draft.draft_finetune_launch,
        ),
        Command(
            name="generate",
            summary="complete a prompt, a file of prompts (batched), or chat on stdin (streamed)",
            config="generate",
            schema=generate_command.GenerateCommand,
            run=generate_command.run_command,
        ),
        Command(
            name="convert",
            summary="our checkpoint <-> Hugging Face MPT directory; sharded checkpoint -> one file",
            config="convert",
            schema=convert.ConvertCommand,
            run=convert.run_command,
        ),
        Command(
            name="sweep",
            summary="small MPTs over sizes x token budgets; fit loss vs compute, predict a larger run",
            config="sweep",
            schema=sweep.SweepCommand,
            run=sweep.run_command,
        ),
        Command(
            name="tokenizer train",
            summary="train a byte-level BPE tokenizer (EOS, pad and ChatML special tokens)",
            config="tokenizer_train",
            schema=schema.TokenizerTrainCommand,
            run=tokenizer.run_train_command,
        ),
    )
}


def _usage() -> str:
    from foundry.compose import CONFIG_DIR, group_options

    width = max(len(n) for n in COMMANDS) + 2
    lines = [
        "usage: foundry <command> [group=option ...] [key=value ...]",
        "       foundry <command> --help   (its options, groups and defaults)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}{c.summary}" for name, c in COMMANDS.items()]
    lines += ["", "config groups (group=option):"]
    for group in sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir()):
        lines.append(f"  {group:<11}{', '.join(group_options(group))}")
    lines += ["", f"configs: {CONFIG_DIR}"]
    return "\n".join(lines)


def _type_text(tp: Any) -> str:
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    return text or str(tp).replace("typing.", "").replace("NoneType", "None")


def _option_lines(schema: type, values: Any, prefix: str, groups: dict[str, Any]) -> list[str]:
    lines = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        value = values.get(f.name) if isinstance(values, dict) else None
        if key in groups:
            lines.append(f"  {key}.*  (pick {key}=<option>; then override any of its keys)")
            continue
        tp = hints[f.name]
        nested = [a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)]
        if nested and isinstance(value, dict) and len(nested) == 1:
            lines += _option_lines(nested[0], value, key + ".", groups)
            continue
        shown = _shown(value)
        help_text = f.metadata.get("help", "")
        lines.append(f"  {key}: {_type_text(tp)} = {shown}")
        if help_text:
            lines.append(f"      {help_text}")
    return lines


def _shown(value: Any) -> str:
    """A default as it would be typed on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and value != "???":
        return repr(value)
    return str(value)


def _command_help(command: Command) -> str:
    from foundry.compose import command_groups, compose_config, group_options

    groups = command_groups(command.config)
    defaults = compose_config(command.config).config
    lines = [
        f"foundry {command.name}: {command.summary}",
        "",
        f"usage: foundry {command.name} "
        + (f"[{command.positional.upper()} ...] " if command.positional else "")
        + "[group=option ...] [key=value ...]",
    ]
    if groups:
        lines += ["", "groups:"]
        for group, default in groups.items():
            lines.append(
                f"  {group} (default: {default or 'none'}): {', '.join(group_options(group))}"
            )
    lines += ["", "options (??? = required):"]
    lines += _option_lines(command.schema, defaults, "", groups)
    return "\n".join(lines)


def _split(argv: Sequence[str]) -> tuple[list[str], list[str], bool]:
    words, rest, wants_help = [], [], False
    for arg in argv:
        if arg in ("-h", "--help"):
            wants_help = True
        elif "=" in arg or arg.startswith("-") or rest:
            rest.append(arg)
        else:
            words.append(arg)
    return words, rest, wants_help


def _find(words: list[str]) -> tuple[Command | None, list[str]]:
    for n in (2, 1):
        name = " ".join(words[:n])
        if len(words) >= n and name in COMMANDS:
            return COMMANDS[name], words[n:]
    return None, words


def _as_list_override(key: str, values: list[str]) -> str:
    """`key=['a','b']`: each value quoted for Hydra's override grammar (paths may hold spaces)."""
    # Hydra's quoted strings: a quote is escaped, and backslashes only where they precede one
    quoted = ("'" + re.sub(r"(\\*)('|$)", _escape_quote, v) + "'" for v in values)
    return f"{key}=[{','.join(quoted)}]"


def _escape_quote(match: re.Match) -> str:
    return match[1] * 2 + ("\\" + match[2] if match[2] else "")


def _unknown(words: list[str], wants_help: bool) -> int:
    name = " ".join(words)
    under = [n for n in COMMANDS if n.startswith(name + " ")]
    if under:
        width = max(map(len, under)) + 2
        listing = "\n".join(f"  foundry {n:<{width}}{COMMANDS[n].summary}" for n in under)
        print(
            f"foundry {name} <command>:\n{listing}", file=sys.stdout if wants_help else sys.stderr
        )
        return 0 if wants_help else 2
    close = difflib.get_close_matches(name, list(COMMANDS), n=1, cutoff=0.5)
    hint = f"; did you mean 'foundry {close[0]}'?" if close else ""
    print(f"foundry: unknown command {name!r}{hint} (see foundry --help)", file=sys.stderr)
    return 2


def _setup_logging() -> None:
    """INFO lines of our packages on stderr (which backend, what was resumed, ...); under
    torchrun only rank 0's, warnings from every rank."""
    rank = int(os.environ.get("RANK", 0))
    handler = logging.StreamHandler(sys.stderr)
    prefix = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""
    handler.setFormatter(logging.Formatter(f"{prefix}%(levelname)s %(name)s: %(message)s"))
    for name in ("foundry", "composer_lite", "streaming", "mpt", "evalkit"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
            logger.propagate = False


def run(command: Command, overrides: list[str]) -> int:
    """Compose, check, print and run one command."""
    from foundry.compose import compose_config

    _setup_logging()

    composed = compose_config(command.config, overrides)
    try:
        cfg = composed.build(command.schema)
    except ConfigError as err:
        status = command.incomplete(composed, err) if command.incomplete else None
        if status is None:
            raise
        return status
    text = composed.to_yaml()
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, once
        print(text, flush=True)
    status = command.run(cfg, text)
    if "torch.distributed" in sys.modules:  # never imported: no process group to leave
        from composer_lite.dist import shutdown_distributed

        shutdown_distributed()  # a torchrun rank waits for the others, then leaves the group
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point; returns the exit status."""
    words, rest, wants_help = _split(list(sys.argv[1:] if argv is None else argv))
    if not words:
        print(_usage(), file=sys.stdout if wants_help else sys.stderr)
        return 0 if wants_help else 2
    command, extra = _find(words)
    if command is not None and extra and command.positional:  # foundry report RUN... key=value
        rest = [_as_list_override(command.positional, extra), *rest]
        extra = []
    if command is None or extra:
        return _unknown(words, wants_help)
    if wants_help:
        print(_command_help(command))
        return 0
    try:
        return run(command, rest)
    except ConfigError as err:
        print(f"foundry {command.name}: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as err:
        print(f"foundry {command.name}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
