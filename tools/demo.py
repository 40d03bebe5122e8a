"""`make demo`: the main job on an embedded default (no network, no ../shared needed).

Until the streaming package exists, the demo only shows what is installed and what each package
offers; the next issue replaces it with the streaming demo.
"""

from __future__ import annotations

import importlib

PACKAGES = ["streaming", "composer_lite", "mpt", "evalkit", "foundry"]


def main() -> None:
    for name in PACKAGES:
        module = importlib.import_module(name)
        summary = (module.__doc__ or "").strip().splitlines()[0]
        print(f"{name:14s} {module.__version__:8s} {summary}")


if __name__ == "__main__":
    main()
