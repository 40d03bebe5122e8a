"""One long-lived mosaicml-streaming subprocess that runs many snippets, for a test session.

Starting the isolated interpreter (torch, then mosaicml-streaming) takes seconds, more on a busy
machine; a suite that compares many things with mosaicml-streaming pays that once. The subprocess
runs `streaming.testing.mosaic.PRELUDE` (the same stubs and version check as a one-off call),
then reads one request per line on its stdin (the snippet's mode and the paths of its code, its
arguments and its result) and answers each on a pipe of its own, so that what a snippet prints
cannot garble the answers. A snippet that raises leaves the subprocess running (its traceback is
the `MosaicError`); one that runs past its timeout or kills the interpreter ends the session.
Each snippet runs in a fresh namespace, but mosaicml-streaming's process state (shared memory, an
initialized process group) stays: snippets clean up after themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import select
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from streaming.testing.mosaic import MOSAIC_VERSION, PRELUDE, MosaicError, MosaicStreaming

__all__ = ["MosaicSession"]

_SERVER = (
    PRELUDE
    + r"""
import traceback
replies = os.fdopen(int(sys.argv[3]), "w", buffering=1)
for line in sys.stdin:
    request = json.loads(line)
    try:
        run_snippet(request["mode"], request["code"], request["args"], request["out"])
        answer = {"ok": True}
    except BaseException:
        answer = {"ok": False, "error": traceback.format_exc()}
    replies.write(json.dumps(answer) + "\n")
"""
)


@dataclass(frozen=True, kw_only=True)
class MosaicSession(MosaicStreaming):
    """`MosaicStreaming`'s methods, run in one subprocess (see the module docstring)."""

    process: subprocess.Popen
    replies: IO[str]
    workdir: str
    stderr_path: str

    @classmethod
    def start(cls, mosaic: MosaicStreaming) -> MosaicSession:
        workdir = tempfile.mkdtemp(prefix="mosaic-session-")
        server, stderr_path = os.path.join(workdir, "server.py"), os.path.join(workdir, "stderr")
        Path(server).write_text(_SERVER)
        read_end, write_end = os.pipe()
        with open(stderr_path, "wb") as stderr:
            argv = [mosaic.python, server, str(mosaic.target), MOSAIC_VERSION, str(write_end)]
            process = subprocess.Popen(
                argv,
                cwd=workdir,
                env=mosaic.env(),
                stdin=subprocess.PIPE,
                stdout=stderr,
                stderr=stderr,
                pass_fds=(write_end,),
                text=True,
            )
        os.close(write_end)
        return cls(
            target=mosaic.target,
            python=mosaic.python,
            process=process,
            replies=os.fdopen(read_end, "r"),
            workdir=workdir,
            stderr_path=stderr_path,
        )

    def _stderr_tail(self) -> str:
        with contextlib.suppress(OSError):
            return Path(self.stderr_path).read_text(errors="replace").strip()[-6000:]
        return ""

    def _exec(self, code: str, args: Any, mode: str, timeout: float) -> Any:
        with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
            paths = {name: os.path.join(tmp, name) for name in ("code.py", "args", "out")}
            Path(paths["code.py"]).write_text(code)
            with open(paths["args"], "wb") as file:
                if mode == "json":
                    file.write(json.dumps(args).encode())
                else:
                    pickle.dump(args, file)
            request = {"mode": mode, "code": paths["code.py"], "args": paths["args"]}
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(json.dumps({**request, "out": paths["out"]}) + "\n")
                self.process.stdin.flush()
            except OSError as err:
                raise MosaicError(
                    f"the mosaicml-streaming session has ended ({err}):\n{self._stderr_tail()}"
                ) from None
            ready, _, _ = select.select([self.replies], [], [], timeout)
            line = self.replies.readline() if ready else ""
            if not ready or not line:
                self.close()
                why = f"no answer within {timeout} s" if not ready else "the subprocess exited"
                raise MosaicError(f"mosaicml-streaming session: {why}:\n{self._stderr_tail()}")
            answer = json.loads(line)
            if not answer["ok"]:
                raise MosaicError(f"mosaicml-streaming snippet failed:\n{answer['error'][-6000:]}")
            with open(paths["out"], "rb") as file:
                return json.load(file) if mode == "json" else pickle.load(file)

    def close(self) -> None:
        """End the subprocess (it exits when its stdin closes) and remove its folder."""
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(OSError):
            self.replies.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
