"""Prints the torch, Triton, CUDA and GPU versions and imports all five packages (gpu-setup's proof)."""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys

PACKAGES = ["streaming", "composer_lite", "mpt", "evalkit", "foundry"]


def main() -> int:
    import torch

    print(f"python  {platform.python_version()} ({sys.executable})")
    print(f"torch   {torch.__version__} (CUDA {torch.version.cuda})")
    try:
        import triton

        print(f"triton  {triton.__version__}")
    except ImportError:
        print("triton  not installed")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            print(
                f"gpu {i}   {props.name}, {props.total_memory / 2**30:.1f} GiB, "
                f"{props.multi_processor_count} SMs, sm_{props.major}{props.minor}"
            )
    else:
        print("gpu     none visible to torch")
    failed = []
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
            print(f"import  {name} {module.__version__} from {module.__file__}")
        except Exception as err:  # report every package, then fail
            failed.append(name)
            print(f"import  {name} FAILED: {type(err).__name__}: {err}")
    for dep in ["zstandard", "xxhash", "hydra-core", "omegaconf", "tokenizers", "boto3"]:
        try:
            print(f"dep     {dep} {importlib.metadata.version(dep)}")
        except importlib.metadata.PackageNotFoundError:
            print(f"dep     {dep} missing")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
