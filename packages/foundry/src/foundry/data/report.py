"""The data-prep report: what came in, what each stage dropped, what was written.

It depends on the inputs and settings only (no times, no process count), so two runs on the
same input write the same `foundry_report.json`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from foundry.data.readers import InputFile
from foundry.data.stages import DedupResult

__all__ = ["build_report", "format_report"]


def build_report(
    result: DedupResult, *, files: list[InputFile], max_seq_len: int
) -> dict[str, Any]:
    """The report as a JSON-ready dict."""
    samples = result.kept_tokens // max_seq_len
    stages = [{"stage": name, **asdict(count)} for name, count in result.stages.items()]
    stages.append(
        {
            "stage": "concat_tail",
            "documents": 0,
            "bytes": 0,
            "tokens": result.kept_tokens - samples * max_seq_len,
            "examples": [],
        }
    )
    return {
        "inputs": {"files": len(files), "documents": result.documents, "bytes": result.bytes},
        "stages": stages,
        "output": {
            "documents": result.kept_documents,
            "tokens": samples * max_seq_len,
            "samples": samples,
            "max_seq_len": max_seq_len,
        },
    }


def format_report(report: dict[str, Any], *, out: str) -> str:
    """The report as a small table for the console."""
    inputs, output = report["inputs"], report["output"]
    lines = [
        f"read {inputs['documents']:,} documents ({inputs['bytes']:,} bytes) "
        f"from {inputs['files']:,} files",
        f"{'stage':<46}{'documents':>12}{'bytes':>16}{'tokens':>14}",
    ]
    for stage in report["stages"]:
        lines.append(
            f"{'dropped by ' + stage['stage']:<46}{stage['documents']:>12,}"
            f"{stage['bytes']:>16,}{stage['tokens']:>14,}"
        )
        lines += [f"    e.g. {where}" for where in stage["examples"][:3]]
    lines.append(
        f"wrote {output['samples']:,} samples of {output['max_seq_len']:,} tokens "
        f"({output['tokens']:,} tokens from {output['documents']:,} documents) to {out}"
    )
    return "\n".join(lines)
