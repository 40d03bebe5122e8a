"""mosaicml-streaming 0.13.0 in an isolated folder, run in subprocesses, for tests and benchmarks.

Our package has mosaicml-streaming's import name (`streaming`), so the two never share an
interpreter. `MosaicStreaming.ensure()` installs mosaicml-streaming with
`pip install --no-deps --target` (plus the few pure-Python modules it imports that this
environment lacks, such as `zstd` and `catalogue`) into an ignored folder, by default
`<venv>/mosaicml-streaming-0.13.0/` (`STREAMING_MOSAIC_DIR` overrides it). It installs into a
temporary name and renames it into place, so a crash never leaves a half-installed folder that
looks complete, and two processes racing to install both end up using one complete copy.

Each call runs a fresh `python` with that folder first on `PYTHONPATH`. The bootstrap stubs the
modules mosaicml-streaming imports but that we never need (`streaming.vision`/`text`/`multimodal`,
which pull in torchvision and transformers, and transformers' two batch classes), imports it,
and checks it really is mosaicml-streaming 0.13.0 from that folder before running the snippet.
`session()` keeps one such subprocess for many snippets (the interpreter takes seconds to start).

    mosaic = MosaicStreaming.ensure()
    mosaic.write("ds", columns={"x": "int"}, samples=[{"x": 1}], compression="zstd")
    assert mosaic.read("ds") == [{"x": 1}]
    mosaic.run("result = streaming.__version__")  # -> "0.13.0"
    with mosaic.session() as session:  # one subprocess for many snippets (a test session's)
        session.run("result = 1")

Samples cross the process boundary pickled (test data we made ourselves), keeping their types.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MOSAIC_VERSION",
    "PRELUDE",
    "MosaicError",
    "MosaicStreaming",
    "MosaicUnavailable",
    "default_dir",
]

MOSAIC_VERSION = "0.13.0"
# module mosaicml-streaming imports -> what to install with it when the interpreter lacks it
_INSTALLABLE = {
    "zstd": "zstd>=1.5.2.5,<2",
    "catalogue": "catalogue>=2,<3",
    "tqdm": "tqdm>=4.64,<5",
    "filelock": "filelock",
    "typing_extensions": "typing_extensions",
    "xxhash": "xxhash>=3,<4",
    "brotli": "Brotli>=1.0.9",
    "snappy": "python-snappy>=0.6.1,<1",
}
_REQUIRED = ("numpy", "torch", "PIL")  # too big to install here: must already be present
_MARKER = ".installed"

# What every mosaicml-streaming subprocess runs first (argv[1:3]: the folder and the version).
PRELUDE = r"""
import json, os, pickle, sys, types
target, version = sys.argv[1:3]

def _stub(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module

for _name in ("streaming.vision", "streaming.text", "streaming.multimodal"):
    _stub(_name)
_stub("transformers")
_stub("transformers.feature_extraction_utils", BatchFeature=type("BatchFeature", (dict,), {}))
_stub("transformers.tokenization_utils_base", BatchEncoding=type("BatchEncoding", (dict,), {}))

import streaming
if not os.path.realpath(streaming.__file__).startswith(os.path.realpath(target) + os.sep) or (
    streaming.__version__ != version
):
    sys.exit(f"imported {streaming.__file__} ({getattr(streaming, '__version__', '?')}), "
             f"expected mosaicml-streaming {version} from {target}")

def run_snippet(mode, code_path, args_path, result_path):
    with open(args_path, "rb") as f:
        args = json.load(f) if mode == "json" else pickle.load(f)
    namespace = {"args": args, "streaming": streaming, "result": None, "__name__": "__mosaic__"}
    with open(code_path) as f:
        exec(compile(f.read(), "<mosaic snippet>", "exec"), namespace)
    with open(result_path, "wb") as f:
        if mode == "json":
            f.write(json.dumps(namespace["result"]).encode())
        else:
            pickle.dump(namespace["result"], f)
"""

_BOOTSTRAP = (
    PRELUDE
    + r"""
run_snippet(*sys.argv[3:7])
"""
)

_BATCH = r"""
import json, os, shutil, tempfile
from streaming import MDSWriter, StreamingDataset
from streaming.base.compression import decompress
from streaming.base.hashing import get_hash

for job in args["writes"]:
    with MDSWriter(out=job["out"], columns=job["columns"], **job["options"]) as writer:
        for sample in job["samples"]:
            writer.write(sample)

def check_hashes(path):
    # every digest that index.json records, recomputed with mosaicml's own functions
    with open(os.path.join(path, "index.json")) as f:
        index = json.load(f)
    for shard in index["shards"]:
        stored = shard["zip_data"] or shard["raw_data"]
        with open(os.path.join(path, stored["basename"]), "rb") as f:
            data = f.read()
        files = [(stored, data)]
        if shard["zip_data"]:
            files.append((shard["raw_data"], decompress(shard["compression"], data)))
        for info, blob in files:
            assert len(blob) == info["bytes"], (info["basename"], len(blob), info["bytes"])
            for algo, digest in info["hashes"].items():
                assert get_hash(algo, blob) == digest, (info["basename"], algo)

result = []
for job in args["reads"]:
    check_hashes(job["path"])
    local = tempfile.mkdtemp(prefix="mosaic-read-")
    try:  # remote=path: mosaicml copies the shards to `local` and decompresses them there
        dataset = StreamingDataset(remote=job["path"], local=local, batch_size=1,
                                   validate_hash=job["validate_hash"],
                                   allow_unsafe_types=job["allow_unsafe_types"])
        result.append([dataset[i] for i in range(dataset.num_samples)])
        del dataset
    finally:
        shutil.rmtree(local, ignore_errors=True)
"""


class MosaicUnavailable(RuntimeError):
    """mosaicml-streaming could not be installed (e.g. no package registry): tests skip."""


class MosaicError(RuntimeError):
    """A snippet failed inside the mosaicml-streaming subprocess (the message has its stderr)."""


def default_dir() -> Path:
    """Where the isolated install lives: $STREAMING_MOSAIC_DIR, else inside the venv."""
    override = os.environ.get("STREAMING_MOSAIC_DIR")
    if override:
        return Path(override)
    name = f"mosaicml-streaming-{MOSAIC_VERSION}"
    if sys.prefix != sys.base_prefix:  # a virtual environment (ours is the repo's ignored .venv)
        return Path(sys.prefix) / name
    return Path.home() / ".cache" / "streaming" / name


def _missing_modules(python: str, modules: Iterable[str]) -> list[str]:
    probe = "import importlib.util, json, sys; "
    probe += "print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]))"
    out = subprocess.run(
        [python, "-c", probe, *modules], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout)


def _install(target: Path, python: str) -> None:
    missing_required = _missing_modules(python, _REQUIRED)
    if missing_required:
        raise MosaicUnavailable(
            f"mosaicml-streaming needs {missing_required}, which {python} lacks"
        )
    extras = [_INSTALLABLE[m] for m in _missing_modules(python, _INSTALLABLE)]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    cmd = [python, "-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check"]
    cmd += ["--quiet", "--target", str(tmp), f"mosaicml-streaming=={MOSAIC_VERSION}", *extras]
    try:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise MosaicUnavailable(
                f"could not run pip to install mosaicml-streaming: {err}"
            ) from err
        if done.returncode != 0:
            raise MosaicUnavailable(
                f"pip could not install mosaicml-streaming=={MOSAIC_VERSION} "
                f"(exit {done.returncode}): {done.stderr.strip()[-2000:]}"
            )
        (tmp / _MARKER).write_text(MOSAIC_VERSION)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / _MARKER).is_file():  # not a racing install that won: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True, kw_only=True)
class MosaicStreaming:
    """A ready isolated install of mosaicml-streaming, and ways to run code against it."""

    target: Path
    python: str = sys.executable

    @classmethod
    def ensure(
        cls, target: str | Path | None = None, *, python: str | None = None
    ) -> MosaicStreaming:
        """Install once (reused afterwards) and return a handle; raises `MosaicUnavailable`."""
        mosaic = cls(
            target=Path(target) if target else default_dir(), python=python or sys.executable
        )
        if (mosaic.target / _MARKER).is_file():
            return mosaic
        if mosaic.target.exists():  # left by something else than our install: move it aside
            stale = mosaic.target.with_name(f".{mosaic.target.name}.{uuid.uuid4().hex[:8]}.stale")
            with contextlib.suppress(OSError):
                os.rename(mosaic.target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        _install(mosaic.target, mosaic.python)
        version = mosaic.run("result = streaming.__version__")
        if version != MOSAIC_VERSION:
            raise MosaicError(f"{mosaic.target} holds mosaicml-streaming {version}")
        return mosaic

    def env(self) -> dict[str, str]:
        """The environment of the subprocess: the install folder first on PYTHONPATH."""
        env = dict(os.environ)
        paths = [str(self.target), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONNOUSERSITE"] = "1"
        return env

    def _exec(self, code: str, args: Any, mode: str, timeout: float) -> Any:
        with tempfile.TemporaryDirectory(prefix="mosaic-run-") as tmp:
            paths = {
                name: os.path.join(tmp, name) for name in ("boot.py", "code.py", "args", "out")
            }
            Path(paths["boot.py"]).write_text(_BOOTSTRAP)
            Path(paths["code.py"]).write_text(code)
            with open(paths["args"], "wb") as file:
                if mode == "json":
                    file.write(json.dumps(args).encode())
                else:
                    pickle.dump(args, file)
            argv = [self.python, paths["boot.py"], str(self.target), MOSAIC_VERSION, mode]
            argv += [paths["code.py"], paths["args"], paths["out"]]
            done = subprocess.run(
                argv, cwd=tmp, env=self.env(), capture_output=True, text=True, timeout=timeout
            )
            if done.returncode != 0:
                raise MosaicError(
                    f"mosaicml-streaming subprocess failed (exit {done.returncode}):\n"
                    f"{done.stderr.strip()[-6000:]}"
                )
            with open(paths["out"], "rb") as file:
                return json.load(file) if mode == "json" else pickle.load(file)

    @contextlib.contextmanager
    def session(self) -> Iterator[MosaicStreaming]:
        """A handle with the same methods whose snippets all run in one long-lived subprocess
        (`streaming.testing.mosaic_session`): the interpreter starts once, not per call."""
        from streaming.testing.mosaic_session import MosaicSession

        session = MosaicSession.start(self)
        try:
            yield session
        finally:
            session.close()

    def run(self, code: str, *, timeout: float = 600, **args: Any) -> Any:
        """Run `code` with mosaicml-streaming imported as `streaming` and the JSON `args` as the
        dict `args`; return what it assigns to `result` (JSON-serializable)."""
        return self._exec(code, args, "json", timeout)

    def call(self, code: str, args: Any = None, *, timeout: float = 600) -> Any:
        """Like `run`, but `args` and `result` travel pickled (numpy arrays, images, Decimal...)."""
        return self._exec(code, args, "pickle", timeout)

    def batch(
        self,
        *,
        writes: Sequence[Mapping[str, Any]] = (),
        reads: Sequence[Mapping[str, Any]] = (),
        timeout: float = 600,
    ) -> list[list[dict[str, Any]]]:
        """In one subprocess: write datasets with mosaicml's MDSWriter, then read datasets.

        writes: [{"out", "columns", "samples", and MDSWriter options (compression, hashes,
        size_limit, ...)}]. reads: [{"path", optional "validate_hash", "allow_unsafe_types"}];
        each read first recomputes every hash in index.json with mosaicml's hashing, then reads
        all samples with its StreamingDataset (from a copy: it decompresses beside the shards).
        Returns the samples of each read, in order.
        """
        write_jobs = []
        for job in writes:
            options = {k: v for k, v in job.items() if k not in ("out", "columns", "samples")}
            write_jobs.append(
                {
                    "out": str(job["out"]),
                    "columns": dict(job["columns"]),
                    "samples": list(job["samples"]),
                    "options": options,
                }
            )
        read_jobs = [
            {
                "path": str(job["path"]),
                "validate_hash": job.get("validate_hash"),
                "allow_unsafe_types": bool(job.get("allow_unsafe_types", False)),
            }
            for job in reads
        ]
        return self.call(_BATCH, {"writes": write_jobs, "reads": read_jobs}, timeout=timeout)

    def write(
        self,
        out: str | Path,
        *,
        columns: Mapping[str, str],
        samples: Sequence[Mapping[str, Any]],
        **options: Any,
    ) -> None:
        """Write one dataset with mosaicml-streaming's MDSWriter."""
        self.batch(writes=[{"out": out, "columns": columns, "samples": samples, **options}])

    def read(
        self,
        path: str | Path,
        *,
        validate_hash: str | None = None,
        allow_unsafe_types: bool = False,
    ) -> list[dict[str, Any]]:
        """Every sample of a local dataset, read with mosaicml-streaming's StreamingDataset."""
        job = {
            "path": path,
            "validate_hash": validate_hash,
            "allow_unsafe_types": allow_unsafe_types,
        }
        return self.batch(reads=[job])[0]
