"""`make demo`: the main job on an embedded default (no network, no ../shared needed).

For now the main job is streaming's: convert a text corpus to MDS shards, stream it back shuffled
over a simulated 2-rank job with dataloader workers, check that every sample came back once, and
print a summary. The corpus is ../shared/data/corpus when it is there, else text generated from
the Python standard library's own source files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_CORPUS = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data")) / "corpus"


def corpus_documents(limit_bytes: int) -> tuple[str, Iterator[str]]:
    """(where from, documents): the shared corpus if present, else stdlib source files."""
    if SHARED_CORPUS.is_dir():
        files = sorted(SHARED_CORPUS.glob("*.txt")) + sorted(SHARED_CORPUS.glob("*.jsonl"))
        source = f"{SHARED_CORPUS} ({len(files)} files)"
    else:
        files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
        source = f"Python standard library sources ({len(files)} files, embedded default)"

    def documents() -> Iterator[str]:
        total = 0
        for path in files:
            if path.suffix == ".jsonl":
                lines = (
                    json.loads(line)["text"] for line in path.open(encoding="utf-8") if line.strip()
                )
            else:
                text = path.read_text(encoding="utf-8", errors="replace")
                lines = (p for p in text.split("\n\n") if p.strip())
            for doc in lines:
                yield doc
                total += len(doc)
                if total >= limit_bytes:
                    return

    return source, documents()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for the MDS dataset (default: a temporary folder)")
    parser.add_argument("--limit-mb", type=float, default=8.0, help="corpus megabytes to convert")
    args = parser.parse_args()

    import numpy as np
    from torch.utils.data import DataLoader

    from streaming import MDSWriter, StreamingDataset

    tmp = None if args.out else tempfile.mkdtemp(prefix="streaming-demo-")
    out = Path(args.out or tmp) / "mds"
    if out.exists():
        shutil.rmtree(out)
    source, docs = corpus_documents(int(args.limit_mb * 1e6))
    print(f"corpus:   {source}")
    start = time.perf_counter()
    n = 0
    with MDSWriter(
        out=str(out),
        columns={"id": "int", "text": "str"},
        compression="zstd",
        hashes=["xxh64"],
        size_limit="1mb",
    ) as writer:
        for n, doc in enumerate(docs, 1):
            writer.write({"id": n - 1, "text": doc})
    write_s = time.perf_counter() - start
    shards = json.loads((out / "index.json").read_text())["shards"]
    raw = sum(s["raw_data"]["bytes"] for s in shards)
    stored = sum(s["zip_data"]["bytes"] for s in shards)
    print(
        f"written:  {n:,} samples in {len(shards)} zstd shards, {raw / 1e6:.1f} MB raw -> {stored / 1e6:.1f} MB ({write_s:.1f} s)"
    )

    # Two ranks, two dataloader workers each; global batch 16.
    start = time.perf_counter()
    per_rank = []
    for rank in range(2):
        os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
        ds = StreamingDataset(local=str(out), batch_size=8, shuffle=True, shuffle_seed=42)
        per_rank.append(
            [batch["id"].tolist() for batch in DataLoader(ds, batch_size=8, num_workers=2)]
        )
    for key in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        os.environ.pop(key)
    read_s = time.perf_counter() - start
    ids = np.array([i for t in range(len(per_rank[0])) for k in range(2) for i in per_rank[k][t]])
    first_epoch = ids[:n]
    assert sorted(first_epoch.tolist()) == list(range(n)), "a sample was lost or repeated"
    print(
        f"streamed: {len(ids):,} samples over 2 ranks x 2 workers in {read_s:.1f} s, "
        f"{len(per_rank[0])} global batches of 16, each sample once (+{len(ids) - n} padding)"
    )
    print(f"shuffled: first global batch ids {ids[:16].tolist()}")
    sample = StreamingDataset(local=str(out))[int(ids[0])]["text"]
    print(f"sample:   {sample[:100]!r}")
    if tmp:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
