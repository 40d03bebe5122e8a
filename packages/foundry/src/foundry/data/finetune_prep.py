"""`foundry data finetune`: prompt/response and chat files -> finetuning MDS (DESIGN's contract).

    foundry data finetune inputs=[sft.jsonl] tokenizer=tok out=sft-mds max_seq_len=2048

In order, every check before the long work:

    the tokenizer (EOS for plain pairs), the output (an existing one needs overwrite=true),
        the inputs exist
    read and check every row (`foundry.data.sft`): a bad row is an error naming its file and
        line (up to ten at once), before any tokenizing
    chat rows: add ChatML's tokens to the tokenizer when it lacks them (add_chat_tokens), and
        check that it encodes the template
    tokenize (progress bar); fit each example to max_seq_len (too_long: truncate its end, or
        drop it; both counted); pack them (best-fit decreasing) when packing=true
    write MDS with streaming's MDSWriter: columns `input_ids`, `labels` (ndarray:int32; labels
        -100 except on responses) and, packed, `sequence_id`; unpacked rows keep their own
        length (the collator pads them). Beside the shards: the tokenizer that encoded them
        (`tokenizer.json`, with any added chat tokens: `foundry finetune` reads it), the report
        (`foundry_report.json`) and the resolved config. index.json is written last, so an
        interrupted output never looks complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Literal

from foundry.data.packing import efficiency, pack, packed_row
from foundry.data.sft import (
    FinetuneDataError,
    Tokenized,
    fit_length,
    read_examples,
    tokenize_examples,
)
from foundry.validate import need, opt

__all__ = [
    "COLUMNS",
    "PACKED_COLUMNS",
    "FinetuneDataCommand",
    "format_finetune_report",
    "prepare_finetune",
    "run_command",
]

COLUMNS = {"input_ids": "ndarray:int32", "labels": "ndarray:int32"}
PACKED_COLUMNS = {**COLUMNS, "sequence_id": "ndarray:int32"}
REPORT_FILE = "foundry_report.json"
CONFIG_FILE = "foundry_config.yaml"
_CHUNK = 1024  # examples tokenized per batch call


@dataclass(frozen=True, kw_only=True)
class FinetuneDataCommand:
    """`foundry data finetune`: prompt/response and chat files -> finetuning MDS."""

    inputs: list[str] = need(".jsonl/.json files or folders of them, local or s3://")
    format: Literal["auto", "prompt_response", "chat"] = opt(
        "auto", "auto: each file's format from its first row"
    )
    pair_template: Literal["plain", "chat"] = opt(
        "plain", "prompt/response rows: plain (prompt, response, EOS) or chat (user, assistant)"
    )
    tokenizer: str = need("tokenizer.json, or a folder holding one")
    eos_token: str | None = opt(None, "EOS after a plain response (default: the tokenizer's)")
    add_chat_tokens: bool = opt(
        True, "add ChatML's <|im_start|>, <|im_end|> to the tokenizer when chat rows need them"
    )
    out: str = need("output folder or s3:// prefix for the MDS dataset")
    max_seq_len: int = opt(2048, "tokens per row at most (the finetuning window)")
    too_long: Literal["truncate", "drop"] = opt(
        "truncate", "an example longer than max_seq_len: cut its end (truncate) or drop it"
    )
    packing: bool = opt(True, "pack short examples into rows of max_seq_len (sequence_id)")
    compression: str | None = opt("zstd", "shard compression (zstd, gz, null...)")
    size_limit: str = opt("64mb", "raw shard size limit")
    overwrite: bool = opt(False, "replace an existing output")
    progress: bool = opt(True, "progress bars on stderr")

    def __post_init__(self) -> None:
        if self.max_seq_len < 2:
            raise ValueError(f"max_seq_len must be >= 2, got {self.max_seq_len}")


def _bar(progress: bool, **kwargs: Any):
    from tqdm import tqdm

    return tqdm(disable=not progress, dynamic_ncols=True, **kwargs)


def _check_start(cfg: FinetuneDataCommand, output: Any) -> Any:
    """The tokenizer, once the output may be written; raises `FinetuneDataError`."""
    from foundry.tokenizer import load_tokenizer
    from streaming.compression import check_compression
    from streaming.format import parse_size

    try:
        tokenizer = load_tokenizer(cfg.tokenizer, eos_token=cfg.eos_token)
    except (FileNotFoundError, ValueError) as err:
        raise FinetuneDataError(f"tokenizer: {err}") from err
    try:
        check_compression(cfg.compression)
        parse_size(cfg.size_limit)
    except (TypeError, ValueError) as err:
        raise FinetuneDataError(f"compression/size_limit: {err}") from err
    if not cfg.overwrite and (output.complete() or output.holds_files()):
        raise FinetuneDataError(
            f"out={cfg.out} already holds files; pass overwrite=true to replace them"
        )
    return tokenizer


def _prepare_tokenizer(cfg: FinetuneDataCommand, tokenizer: Any, formats: dict) -> int:
    """Chat tokens added (when chat rows need them), after checking the tokenizer can encode
    every format in use."""
    from foundry.chat import check_chat_encodable, ensure_chat_tokens

    plain = cfg.pair_template == "plain" and "prompt_response" in formats.values()
    if plain and tokenizer.eos_token_id is None:
        raise FinetuneDataError(
            f"tokenizer {tokenizer.source} has no known EOS token to end a response: set "
            "eos_token=<token>"
        )
    chat = "chat" in formats.values() or (
        cfg.pair_template == "chat" and "prompt_response" in formats.values()
    )
    if not chat:
        return 0
    added = ensure_chat_tokens(tokenizer) if cfg.add_chat_tokens else 0
    check_chat_encodable(tokenizer, setting=f"tokenizer={cfg.tokenizer}")
    return added


def _fit_all(
    examples: list[Tokenized], cfg: FinetuneDataCommand
) -> tuple[list[Tokenized], dict[str, Any]]:
    kept, counts, dropped = [], {"kept": 0, "truncated": 0, "dropped": 0}, []
    for example in examples:
        fitted, what = fit_length(example, cfg.max_seq_len, cfg.too_long)
        counts[what] += 1
        if fitted is None:
            dropped.append(example.where)
        else:
            kept.append(fitted)
    if not kept:
        raise FinetuneDataError(
            f"every one of the {len(examples)} examples is longer than max_seq_len="
            f"{cfg.max_seq_len} with no response token within it (e.g. {dropped[0]}); raise "
            "max_seq_len or use too_long=truncate"
        )
    return kept, {**counts, "dropped_examples": dropped[:5]}


def _rows(kept: list[Tokenized], cfg: FinetuneDataCommand, pad_id: int) -> tuple[list, int]:
    """(the rows to write, their count) packed or one per example."""
    if not cfg.packing:
        return [{"input_ids": e.input_ids, "labels": e.labels} for e in kept], len(kept)
    groups = pack([len(e.input_ids) for e in kept], cfg.max_seq_len)
    rows = [packed_row([kept[i] for i in g], cfg.max_seq_len, pad_id) for g in groups]
    return rows, len(rows)


def _tokenizer_files(tokenizer: Any) -> dict[str, str]:
    from foundry.tokenizer import save_tokenizer

    with tempfile.TemporaryDirectory(prefix="foundry-tok-") as tmp:
        folder = save_tokenizer(
            tokenizer.backend,
            os.path.join(tmp, "t"),
            eos_token=tokenizer.eos_token,
            pad_token=tokenizer.pad_token,
        )
        return {p.name: p.read_text() for p in folder.iterdir()}


def prepare_finetune(cfg: FinetuneDataCommand, *, config_text: str = "") -> dict[str, Any]:
    """Run `foundry data finetune`; returns the report (also saved beside the output)."""
    from foundry.data.prep import Output
    from foundry.data.readers import expand_inputs
    from streaming import MDSWriter

    output = Output(cfg.out)
    tokenizer = _check_start(cfg, output)
    with tempfile.TemporaryDirectory(prefix="foundry-sft-inputs-") as staging:
        files = expand_inputs(list(cfg.inputs), staging=staging, include=["*.jsonl", "*.json"])
        examples, formats = read_examples(
            [(f.name, f.path) for f in files], format=cfg.format, pair_template=cfg.pair_template
        )
    added = _prepare_tokenizer(cfg, tokenizer, formats)
    tokenized: list[Tokenized] = []
    with _bar(cfg.progress, total=len(examples), desc="tokenize", unit="example") as bar:
        for start in range(0, len(examples), _CHUNK):
            chunk = examples[start : start + _CHUNK]
            tokenized += tokenize_examples(chunk, tokenizer)
            bar.update(len(chunk))
    kept, counts = _fit_all(tokenized, cfg)
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    rows, n_rows = _rows(kept, cfg, pad_id)
    tokens = sum(len(e.input_ids) for e in kept)
    report = {
        "inputs": {"files": formats, "examples": len(examples)},
        "examples": counts,
        "tokens": {"total": tokens, "trained": int(sum((e.labels >= 0).sum() for e in kept))},
        "tokenizer": {
            "source": tokenizer.source,
            "vocab_size": tokenizer.vocab_size,
            "added_chat_tokens": added,
        },
        "output": {
            "rows": n_rows,
            "packed": cfg.packing,
            "max_seq_len": cfg.max_seq_len,
            "longest_row": max(len(r["input_ids"]) for r in rows),
            "packing_efficiency": round(efficiency(tokens, n_rows, cfg.max_seq_len), 4),
        },
    }
    columns = PACKED_COLUMNS if cfg.packing else COLUMNS
    with MDSWriter(
        out=cfg.out,
        columns=columns,
        compression=cfg.compression,
        hashes=["xxh64"],
        size_limit=cfg.size_limit,
        exist_ok=cfg.overwrite,
    ) as writer:
        with _bar(cfg.progress, total=n_rows, desc="write", unit="row") as bar:
            for row in rows:
                writer.write(row)
                bar.update(1)
        # beside the shards, before the writer puts index.json last
        for name, text in _tokenizer_files(tokenizer).items():
            output.put(name, text)
        output.put(REPORT_FILE, json.dumps(report, indent=2, sort_keys=True) + "\n")
        if config_text:
            output.put(CONFIG_FILE, config_text)
    return report


def format_finetune_report(report: dict[str, Any], *, out: str) -> str:
    """The report as a few lines for the console."""
    ex, out_, tok = report["examples"], report["output"], report["tokenizer"]
    files = ", ".join(f"{name} ({fmt})" for name, fmt in report["inputs"]["files"].items())
    lines = [
        f"read {report['inputs']['examples']:,} examples from {files}",
        f"kept {ex['kept']:,}, truncated {ex['truncated']:,} (end cut to max_seq_len="
        f"{out_['max_seq_len']}), dropped {ex['dropped']:,}",
    ]
    lines += [f"    dropped e.g. {where}" for where in ex["dropped_examples"][:3]]
    if tok["added_chat_tokens"]:
        lines.append(
            f"added {tok['added_chat_tokens']} ChatML token(s) to the tokenizer (now "
            f"{tok['vocab_size']} tokens; foundry finetune grows the model's embedding to match)"
        )
    how = "packed" if out_["packed"] else "one example per row"
    lines.append(
        f"wrote {out_['rows']:,} rows ({how}) of {report['tokens']['total']:,} tokens, "
        f"{report['tokens']['trained']:,} of them trained, to {out}"
    )
    lines.append(
        f"packing efficiency {out_['packing_efficiency']:.1%} (example tokens / "
        f"{out_['rows']:,} rows x {out_['max_seq_len']} tokens)"
        + ("" if out_["packed"] else "; packing=true would fill rows closer to 100%")
    )
    return "\n".join(lines)


def run_command(cfg: FinetuneDataCommand, config_text: str) -> int:
    """The `foundry data finetune` command: prepare, print the report."""
    report = prepare_finetune(cfg, config_text=config_text)
    print(format_finetune_report(report, out=cfg.out))
    return 0
