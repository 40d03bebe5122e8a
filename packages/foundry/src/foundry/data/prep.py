"""`foundry data prep`: the parallel, resumable driver of the stages in `stages.py`.

    check everything cheap first: tokenizer, EOS, the model's vocabulary and max_seq_len,
        compression and sizes, the output (an existing dataset needs overwrite=true)
    take the work folder (<out>.work; a lock: one run at a time), compare its settings
    find the inputs (s3:// objects fetched into the work folder), plan the units
    A  the units without a result, over `num_proc` processes (spawned), with a progress bar
    B  deduplicate; the report of what each stage dropped is complete here
    C  write the MDS shards (index.json last), then the report and the resolved config beside
       them; then the work folder goes

Crash anywhere and run the same command again: finished units are kept (each result file is
written whole), B and C are redone, and the output never has an index.json before C finished,
so an interrupted output never looks complete. The settings that stages A and B read (inputs,
tokenizer, eos_token, text_key, text_unit, filters, dedup, unit_size) must match the unfinished
run's, as must the inputs' sizes and modification times; otherwise the error says to pass
overwrite=true. max_seq_len, compression and size_limit may change: C is redone anyway.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foundry.data.readers import expand_inputs, plan_units
from foundry.data.report import build_report, format_report
from foundry.data.stages import (
    UnitJob,
    UnitSettings,
    WriteSettings,
    deduplicate,
    process_unit,
    write_samples,
)

if TYPE_CHECKING:
    from foundry.schema import DataPrepCommand
    from foundry.tokenizer import FoundryTokenizer

__all__ = ["CONFIG_FILE", "REPORT_FILE", "PrepError", "prepare", "run_command"]

REPORT_FILE = "foundry_report.json"
CONFIG_FILE = "foundry_config.yaml"
# Settings that stages A and B do not read: an unfinished run may be finished with others (stage
# C, the writing, is always redone unless it had finished).
_NOT_RECORDED = (
    "num_proc",
    "progress",
    "work_dir",
    "overwrite",
    "model",
    "out",
    "max_seq_len",
    "compression",
    "size_limit",
)


class PrepError(RuntimeError):
    """The run cannot start or go on; the message says what to change."""


def _bar(progress: bool, **kwargs: Any):
    from tqdm import tqdm

    return tqdm(disable=not progress, dynamic_ncols=True, **kwargs)


def check_settings(cfg: DataPrepCommand) -> FoundryTokenizer:
    """Every check that needs no pass over the data; returns the tokenizer."""
    from foundry.tokenizer import check_seq_len, check_vocab_fits, load_tokenizer
    from streaming.compression import check_compression
    from streaming.format import parse_size

    try:
        tokenizer = load_tokenizer(cfg.tokenizer, eos_token=cfg.eos_token)
    except (FileNotFoundError, ValueError) as err:
        raise PrepError(f"tokenizer: {err}") from err
    if tokenizer.eos_token_id is None:
        raise PrepError(
            f"the tokenizer {tokenizer.source} has no known EOS token; set eos_token=<token>"
        )
    if cfg.model is not None:
        try:
            check_vocab_fits(tokenizer, cfg.model.vocab_size)
            check_seq_len(cfg.max_seq_len, cfg.model.max_seq_len)
        except ValueError as err:
            raise PrepError(str(err)) from err
    for key, check in (
        ("compression", lambda: check_compression(cfg.compression)),
        ("size_limit", lambda: parse_size(cfg.size_limit)),
        ("unit_size", lambda: parse_size(cfg.unit_size) or 0),
    ):
        try:
            check()
        except (TypeError, ValueError) as err:
            raise PrepError(f"{key}: {err}") from err
    return tokenizer


class Output:
    """The output dataset, local or remote: is it complete, and may it be written?"""

    def __init__(self, out: str) -> None:
        from streaming.storage import is_remote

        self.out = out
        self.remote = is_remote(out)

    def _url(self, name: str) -> str:
        from streaming.storage import join_url

        return join_url(self.out, name)

    def complete(self) -> bool:
        if self.remote:
            from streaming.storage import object_exists

            return object_exists(self._url("index.json"))
        return (Path(self.out) / "index.json").is_file()

    def holds_files(self) -> bool:
        path = Path(self.out)
        return not self.remote and path.exists() and (not path.is_dir() or any(path.iterdir()))

    def put(self, name: str, text: str) -> None:
        if self.remote:
            from streaming.storage import upload_bytes

            upload_bytes(text.encode(), self._url(name))
        else:
            from streaming.storage import write_bytes_atomic

            write_bytes_atomic(str(Path(self.out) / name), text.encode())


class WorkDir:
    """The resumable state of one run: settings, fetched inputs, unit results, a lock."""

    def __init__(self, path: str) -> None:
        self.path = Path(path).expanduser()
        self._lock: Any = None

    def lock(self, out: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "units").mkdir(exist_ok=True)
        self._lock = open(self.path / "lock", "w")  # held (locked) for the whole run
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise PrepError(
                f"another foundry data prep is writing out={out} ({self.path})"
            ) from err

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def unit_path(self, index: int) -> str:
        return str(self.path / "units" / f"{index:06d}.npz")

    def marker(self, name: str) -> Path:
        return self.path / name

    def agree(self, name: str, value: Any, *, what: str) -> None:
        """Record `value` under `name`, or check it equals what an earlier run recorded."""
        path = self.marker(name)
        text = json.dumps(value, sort_keys=True, indent=1)
        if path.is_file() and path.read_text() != text:
            raise PrepError(
                f"an unfinished run in {self.path} had other {what}; run it with its settings "
                "to finish it, or pass overwrite=true to start over"
            )
        if not path.is_file():
            from streaming.storage import write_bytes_atomic

            write_bytes_atomic(str(path), text.encode())


def _default_work_dir(out: str, remote: bool) -> str:
    if not remote:
        return out.rstrip("/") + ".work"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return str(base / "foundry" / "prep" / hashlib.sha256(out.encode()).hexdigest()[:16])


def _settings_record(cfg: DataPrepCommand, tokenizer: FoundryTokenizer) -> dict[str, Any]:
    record = {k: v for k, v in asdict(cfg).items() if k not in _NOT_RECORDED}
    with open(tokenizer.source, "rb") as f:
        record["tokenizer_sha256"] = hashlib.sha256(f.read()).hexdigest()
    return record


def _run_units(jobs: list[UnitJob], num_proc: int, progress: bool) -> None:
    bar = _bar(progress, total=sum(j.size for j in jobs), unit="B", unit_scale=True)
    bar.set_description("filter+hash+tokenize")
    with bar:
        if num_proc == 1 or len(jobs) <= 1:
            for job in jobs:
                bar.update(process_unit(job))
            return
        context = multiprocessing.get_context("spawn")  # no fork: tokenizers' threads stay sane
        with context.Pool(min(num_proc, len(jobs))) as pool:
            for done in pool.imap_unordered(process_unit, jobs):
                bar.update(done)


def _claim_output(cfg: DataPrepCommand, output: Output, work: WorkDir) -> bool:
    """Whether stage C may replace what is at `out`; raises if `out` holds something not ours."""
    if cfg.overwrite:
        return True
    if output.complete():
        if work.marker("written").is_file():
            return True
        raise PrepError(
            f"out={cfg.out} already holds a dataset (index.json); pass overwrite=true to replace it"
        )
    if output.holds_files() and not work.marker("settings.json").is_file():
        raise PrepError(
            f"out={cfg.out} is not empty and no unfinished run of this command is recorded for "
            f"it ({work.path}); pass overwrite=true to replace what is there"
        )
    return True


def prepare(cfg: DataPrepCommand, *, config_text: str = "") -> dict[str, Any]:
    """Run `foundry data prep`; returns the report (also printed and saved beside the output)."""
    tokenizer = check_settings(cfg)
    output = Output(cfg.out)
    work = WorkDir(cfg.work_dir or _default_work_dir(cfg.out, output.remote))
    if cfg.overwrite:
        work.remove()
    _claim_output(cfg, output, work)
    files = expand_inputs(list(cfg.inputs), staging=work.path / "inputs", include=cfg.include)
    work.lock(cfg.out)
    work.agree("settings.json", _settings_record(cfg, tokenizer), what="settings")
    identity = [
        [f.name, f.size, os.stat(f.path).st_mtime_ns if f.name == f.path else None] for f in files
    ]
    work.agree("inputs.json", identity, what="inputs (names, sizes or modification times)")
    from streaming.format import parse_size

    units = plan_units(files, text_unit=cfg.text_unit, unit_bytes=parse_size(cfg.unit_size) or 1)
    settings = UnitSettings(
        tokenizer=tokenizer.source,
        eos_token=tokenizer.eos_token,
        text_key=cfg.text_key,
        text_unit=cfg.text_unit,
        filters=cfg.filters,
        dedup=cfg.dedup,
    )
    paths = [work.unit_path(i) for i in range(len(units))]
    jobs = [
        UnitJob(
            index=i,
            segments=tuple((files[s.file], s) for s in unit),
            settings=settings,
            result_path=paths[i],
        )
        for i, unit in enumerate(units)
        if not os.path.exists(paths[i])
    ]
    _run_units(jobs, cfg.num_proc or os.cpu_count() or 1, cfg.progress)
    result = None
    with _bar(cfg.progress, total=len(paths), desc="deduplicate", unit="unit") as bar:
        for step in deduplicate(paths, cfg.dedup):
            bar.update(step is None)
            result = step or result
    assert result is not None
    report = build_report(result, files=files, max_seq_len=cfg.max_seq_len)
    if report["output"]["samples"] == 0:
        raise PrepError(
            f"nothing to write: {result.kept_tokens} tokens are left after filtering and "
            f"deduplication, fewer than max_seq_len={cfg.max_seq_len}; lower max_seq_len, loosen "
            "filters.*, or add data (the report below says what was dropped)\n"
            + format_report(report, out=cfg.out)
        )
    if not (work.marker("written").is_file() and output.complete()):
        write = WriteSettings(
            out=cfg.out,
            max_seq_len=cfg.max_seq_len,
            exist_ok=True,
            compression=cfg.compression,
            size_limit=cfg.size_limit,
        )
        with _bar(
            cfg.progress, total=report["output"]["samples"], desc="write", unit="sample"
        ) as bar:
            for rows in write_samples(paths, result.keeps, write):
                bar.update(rows)
        work.marker("written").touch()
    output.put(REPORT_FILE, json.dumps(report, indent=2, sort_keys=True) + "\n")
    if config_text:
        output.put(CONFIG_FILE, config_text)
    work.remove()
    return report


def run_command(cfg: DataPrepCommand, config_text: str) -> int:
    """The `foundry data prep` command: prepare, print the report."""
    report = prepare(cfg, config_text=config_text)
    print(format_report(report, out=cfg.out))
    return 0
