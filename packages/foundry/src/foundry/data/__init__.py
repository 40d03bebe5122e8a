"""Data preparation and mixing: corpora -> filtered, deduplicated, tokenized MDS -> Streams.

- `readers`: input files (local or s3://), work units, documents
- `filters`, `dedup`: quality filters; exact (xxhash) and near (MinHash + LSH) duplicates
- `stages`, `prep`, `report`: the parallel, resumable `foundry data prep` and its report
- `format`: the pretraining MDS layout (column `tokens`, ndarray:int32; llm-foundry's `bytes`)
- `mix`: a `data/` config's sources and proportions as `streaming.Stream`s
"""

__all__: list[str] = []
