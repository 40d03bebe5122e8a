"""foundry: the Hydra-driven toolkit from raw text to a pretrained MPT (CLI `foundry`).

Built so far: the CLI and its config groups (`foundry.cli`, `foundry.compose`, `foundry.schema`,
`foundry.validate`), tokenizers (`foundry.tokenizer`) and data preparation and mixing
(`foundry.data`). See the package README for what each command does.
"""

__version__ = "0.3.2"
__all__ = ["__version__"]
