"""The Python examples in each package's README run as written, without printing a warning.

Each example runs in a process of its own, in an empty folder, the way `python -c` runs it: a
fresh `__main__` module, `sys.argv == ["-c"]`, its exit status and its stderr checked, atexit
handlers and non-daemon threads finished before it exits. The processes are forked from one
runner that has imported torch, which every example imports (directly or through our packages):
its import is paid once, not once per example. The examples' processes run side by side, one per
CPU (each in its own folder; each mostly imports, on one core). Whatever the runner prints while
importing torch counts as part of every example's stderr.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RUNNER = r"""
import atexit, json, os, signal, sys, threading, traceback, types

import torch  # noqa: F401 (the import every example shares)

jobs = json.loads(sys.stdin.read())
sys.stdout.flush()
sys.stderr.flush()
status, running = {}, {}
width = max(1, len(os.sched_getaffinity(0)))  # examples at once: one per CPU


def reap():
    pid, wait_status = os.wait()
    status[running.pop(pid)] = os.waitstatus_to_exitcode(wait_status)


for name, code, folder, out, err in jobs:
    while len(running) >= width:
        reap()
    pid = os.fork()
    if pid == 0:
        signal.alarm(600)  # a hung example is killed (and fails) after 10 minutes
        os.chdir(folder)
        for path, fd in ((out, 1), (err, 2)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        sys.argv = ["-c"]
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        rc = 0
        try:
            exec(compile(code, "<string>", "exec"), main.__dict__)
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                rc = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                rc = 1
        except BaseException:
            traceback.print_exc()
            rc = 1
        try:
            threading._shutdown()  # as the interpreter does at exit: join non-daemon threads
            atexit._run_exitfuncs()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
    running[pid] = name
while running:
    reap()
print(json.dumps(status))
"""


def examples() -> dict[str, str]:
    found = {}
    for readme in sorted(ROOT.glob("packages/*/README.md")):
        for n, block in enumerate(re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)):
            found[f"{readme.parent.name}-{n}"] = block
    return found


EXAMPLES = examples()


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict[str, tuple[int, str]]:
    """{example: (exit status, stderr)}, each example run once in its own forked process."""
    base = tmp_path_factory.mktemp("readme")
    jobs = []
    for name, code in EXAMPLES.items():
        (base / name).mkdir()
        out, err = base / f"{name}.stdout", base / f"{name}.stderr"
        jobs.append((name, code, str(base / name), str(out), str(err)))
    runner = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(jobs),
        cwd=base,
        capture_output=True,
        text=True,
        timeout=600 * len(jobs),
    )
    assert runner.returncode == 0, runner.stderr
    status = json.loads(runner.stdout.splitlines()[-1])
    return {
        name: (status[name], runner.stderr + (base / f"{name}.stderr").read_text())
        for name in EXAMPLES
    }


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_readme_example_runs(name: str, ran):
    returncode, stderr = ran[name]
    assert returncode == 0, stderr
    assert "Warning" not in stderr, f"the example prints a warning:\n{stderr}"
