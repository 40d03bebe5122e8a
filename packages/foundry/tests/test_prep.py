"""`foundry data prep`: output layout, the report, determinism over process counts, resumption
after SIGKILL, and the errors raised before any long work."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

from foundry.compose import compose_config
from foundry.data.prep import REPORT_FILE, PrepError, prepare
from foundry.data.readers import InputError, expand_inputs, plan_units
from foundry.schema import DataPrepCommand
from foundry.tokenizer import load_tokenizer
from streaming import StreamingDataset

from .conftest import random_text, write_jsonl


def make_corpus(root: Path, *, docs: int, seed: int = 0) -> list[tuple[str, int]]:
    """jsonl files and a text file (one document per line) under `root`; returns (text, group)
    in corpus order, where documents of one group are copies or near copies of each other."""
    rng = random.Random(seed)
    base = [random_text(rng, rng.randint(80, 160)) for _ in range(docs)]
    items = [(t, g) for g, t in enumerate(base)]
    for g in rng.sample(range(docs), docs // 10):  # exact copies
        items.append((base[g], g))
    for g in rng.sample(range(docs), docs // 10):  # one word changed: 5-gram Jaccard >= 71/81
        words = base[g].split()
        words[len(words) // 2] = "changed"
        items.append((" ".join(words), g))
    items += [(random_text(rng, 2), -1 - i) for i in range(docs // 10)]  # too short
    rng.shuffle(items)
    third = len(items) // 3
    write_jsonl(root / "a.jsonl", [t for t, _ in items[:third]])
    write_jsonl(root / "b" / "c.jsonl", [t for t, _ in items[third : 2 * third]])
    (root / "b" / "d.txt").write_text("".join(t + "\n" for t, _ in items[2 * third :]))
    return items


def config(**settings) -> DataPrepCommand:
    overrides = [f"{k}={v}" for k, v in settings.items()]
    return compose_config("data_prep", overrides).build(DataPrepCommand)


def base_settings(tmp_path: Path, tokenizer: Path, **more):
    return dict(
        inputs=f"[{tmp_path / 'corpus'}]",
        out=tmp_path / "out",
        tokenizer=tokenizer,
        max_seq_len=64,
        text_unit="line",
        progress="false",
        **more,
    )


def read_tokens(out: Path) -> np.ndarray:
    ds = StreamingDataset(local=str(out), shuffle=False, batch_size=1)
    return np.concatenate([ds[i]["tokens"] for i in range(ds.num_samples)])


def dataset_files(out: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "foundry_config.yaml"
    }


def test_prep_concatenates_kept_documents_with_eos(tmp_path, tiny_tokenizer):
    items = make_corpus(tmp_path / "corpus", docs=120)
    cfg = config(**base_settings(tmp_path, tiny_tokenizer, num_proc=1))
    report = prepare(cfg, config_text="# the config\n")

    # what should be kept, computed from the planted groups: the first document of each group,
    # and no document of fewer than 5 words (filters.min_words)
    tok = load_tokenizer(tiny_tokenizer)
    seen, expected = set(), []
    for text, group in items:
        if len(text.split()) >= 5 and group not in seen:
            seen.add(group)
            expected += tok.encode(text) + [tok.eos_token_id]
    whole = len(expected) // 64 * 64
    got = read_tokens(tmp_path / "out")
    assert got.dtype == np.int32 and len(got) == whole
    np.testing.assert_array_equal(got, expected[:whole])

    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["filter:min_words"]["documents"] == 12
    assert stages["exact_dedup"]["documents"] == 12
    assert stages["near_dedup"]["documents"] == 12
    assert stages["concat_tail"]["tokens"] == len(expected) - whole
    assert report["output"]["samples"] == whole // 64
    saved = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert saved == report
    assert (tmp_path / "out" / "foundry_config.yaml").read_text() == "# the config\n"
    assert not (tmp_path / "out.work").exists(), "the work folder goes once the output is whole"


def test_output_is_byte_identical_whatever_the_process_count(tmp_path, tiny_tokenizer):
    make_corpus(tmp_path / "corpus", docs=150, seed=1)
    outputs = []
    for procs in (1, 3):
        settings = base_settings(tmp_path, tiny_tokenizer, num_proc=procs, unit_size="2kb")
        settings["out"] = tmp_path / f"out{procs}"
        settings["size_limit"] = "4kb"
        prepare(config(**settings))
        outputs.append(dataset_files(tmp_path / f"out{procs}"))
    assert len(outputs[0]) > 4, "several shards"
    assert outputs[0] == outputs[1]


class ForkedPrep:
    """`foundry data prep k=v ...` (the command's `main`) in a process forked from this one, the
    leader of a session of its own as `start_new_session=True` made it: `os.killpg` reaches it
    and the workers it spawns. Forked, not a fresh interpreter: torch and foundry are not imported
    again before the run starts. Its stdout and stderr go to `log`."""

    def __init__(self, settings: dict, log: Path):
        argv = ["data", "prep", *(f"{k}={v}" for k, v in settings.items())]
        self.log, self.returncode = log, None
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.setsid()
                stream = open(log, "w", buffering=1)
                os.dup2(stream.fileno(), 1)
                os.dup2(stream.fileno(), 2)
                sys.stdout = sys.stderr = stream
                from foundry.cli import main

                try:
                    code = main(argv)
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                os._exit(code or 0)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture(scope="module")
def resume_setup(tmp_path_factory, tiny_tokenizer):
    """A corpus of ~1,000 small units and its output from one uninterrupted run."""
    root = tmp_path_factory.mktemp("resume")
    make_corpus(root / "corpus", docs=600, seed=2)
    settings = base_settings(root, tiny_tokenizer, num_proc=2, unit_size="4kb", size_limit="2kb")
    settings["out"] = root / "reference"
    prepare(config(**settings))
    return root, settings, dataset_files(root / "reference")


@pytest.mark.parametrize("kill_when", ["units", "shards"])
def test_sigkill_mid_run_then_rerun_gives_the_same_output(resume_setup, kill_when):
    root, settings, reference = resume_setup
    out = root / f"killed-{kill_when}"
    settings = {**settings, "out": out}
    watched = Path(f"{out}.work/units") if kill_when == "units" else out
    proc = ForkedPrep(settings, root / f"killed-{kill_when}.log")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if watched.is_dir() and sum(1 for p in watched.glob("*") if ".tmp" not in p.name) >= 3:
            break
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.output()}"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "index.json").exists(), "an interrupted output must not look complete"
    if kill_when == "units":
        files = expand_inputs([str(root / "corpus")], staging=root / "unused")
        total = len(plan_units(files, text_unit="line", unit_bytes=4096))
        done = len(list(watched.glob("*.npz")))
        assert 3 <= done < total, f"killed while units were still pending ({done} of {total})"
        assert not out.exists() or not any(out.iterdir())

    prepare(config(**settings))  # the same command again, without overwrite
    assert dataset_files(out) == reference, "nothing duplicated or lost"


def test_existing_output_is_never_overwritten_without_overwrite(tmp_path, tiny_tokenizer):
    make_corpus(tmp_path / "corpus", docs=40)
    settings = base_settings(tmp_path, tiny_tokenizer, num_proc=1)
    prepare(config(**settings))
    before = dataset_files(tmp_path / "out")
    with pytest.raises(PrepError, match="already holds a dataset.*overwrite=true"):
        prepare(config(**settings))
    assert dataset_files(tmp_path / "out") == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(PrepError, match="is not empty.*overwrite=true"):
        prepare(config(**{**settings, "out": foreign}))
    assert (foreign / "notes.txt").read_text() == "mine"
    prepare(config(**{**settings, "out": foreign, "overwrite": "true"}))
    assert (foreign / "index.json").is_file() and not (foreign / "notes.txt").exists()


def test_resume_refuses_changed_settings(tmp_path, tiny_tokenizer):
    make_corpus(tmp_path / "corpus", docs=40)
    settings = base_settings(tmp_path, tiny_tokenizer, num_proc=1)
    work = tmp_path / "out.work"
    work.mkdir()
    (work / "settings.json").write_text("{}")  # an unfinished run with other settings
    with pytest.raises(PrepError, match="had other settings.*overwrite=true"):
        prepare(config(**settings))


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (
            {"inputs": "[/no/such/corpus]"},
            InputError,
            r"inputs\[0\]: /no/such/corpus does not exist",
        ),
        (
            {"tokenizer": "/no/such/tok"},
            PrepError,
            r"tokenizer: tokenizer '/no/such/tok' not found",
        ),
        (
            {"model": "mpt_tiny", "max_seq_len": 512},
            PrepError,
            r"max_seq_len=512 is longer than model.max_seq_len=256: set max_seq_len<=256",
        ),
        (
            {"model": "mpt_tiny", "model.vocab_size": 512},
            PrepError,
            r"600 tokens but model.vocab_size=512: set model.vocab_size=640",
        ),
        ({"compression": "zip"}, PrepError, r"compression: .*zip"),
    ],
)
def test_bad_input_fails_before_any_work(tmp_path, tiny_tokenizer, change, error, message):
    make_corpus(tmp_path / "corpus", docs=20)
    with pytest.raises(error, match=message):
        prepare(config(**{**base_settings(tmp_path, tiny_tokenizer), **change}))
    assert not list(tmp_path.glob("out.work/units/*.npz")), "no unit was processed"


def test_empty_corpus_and_bad_rows_are_named(tmp_path, tiny_tokenizer):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "empty.jsonl").write_text("")
    with pytest.raises(InputError, match="the corpus is empty"):
        prepare(config(**base_settings(tmp_path, tiny_tokenizer)))
    bad = tmp_path / "corpus" / "empty.jsonl"
    bad.write_text('{"text": "fine words here and more"}\n{"txt": "x"}\n')
    with pytest.raises(
        InputError, match=rf"{bad}:2: no 'text' key \(found \['txt'\]\); set text_key"
    ):
        prepare(config(**base_settings(tmp_path, tiny_tokenizer, overwrite="true")))
    bad.write_text('{"text": "fine words here and more"}\nnot json\n')
    with pytest.raises(InputError, match=rf"{bad}:2: not a JSON object"):
        prepare(config(**base_settings(tmp_path, tiny_tokenizer, overwrite="true")))


def test_too_little_data_left_names_max_seq_len(tmp_path, tiny_tokenizer):
    write_jsonl(tmp_path / "corpus" / "a.jsonl", ["only a few words in here"])
    with pytest.raises(PrepError, match=r"fewer than max_seq_len=64; lower max_seq_len"):
        prepare(config(**base_settings(tmp_path, tiny_tokenizer)))
    # doing what the message says finishes the same run: no overwrite needed
    report = prepare(config(**{**base_settings(tmp_path, tiny_tokenizer), "max_seq_len": 4}))
    assert report["output"]["samples"] > 0


def test_cli_data_prep_prints_config_and_report_or_a_clear_error(tmp_path, tiny_tokenizer, capsys):
    from foundry.cli import main

    args = [f"{k}={v}" for k, v in base_settings(tmp_path, tiny_tokenizer, num_proc=1).items()]
    assert main(["data", "prep", *args]) == 1
    err = capsys.readouterr().err
    assert f"foundry data prep: error: inputs[0]: {tmp_path / 'corpus'} does not exist" in err
    assert not (tmp_path / "out.work").exists(), "a run that could not start leaves nothing"
    make_corpus(tmp_path / "corpus", docs=40)
    assert main(["data", "prep", *args]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# foundry data_prep\n# overrides: inputs=")
    assert "max_seq_len: 64" in out and "dropped by exact_dedup" in out and "wrote " in out
    saved = (tmp_path / "out" / "foundry_config.yaml").read_text()
    assert "max_seq_len: 64" in saved and "text_unit: line" in saved


def test_include_picks_files_from_folders(tmp_path):
    (tmp_path / "src" / "__pycache__").mkdir(parents=True)
    for name in ("a.py", "b.md", "c.pyc", "__pycache__/a.cpython-311.pyc", ".hidden.py"):
        (tmp_path / "src" / name).write_text("x = 1\n")
    files = expand_inputs([str(tmp_path / "src")], staging=tmp_path / "s", include=["*.py", "*.md"])
    assert [Path(f.name).name for f in files] == ["a.py", "b.md"]
    with pytest.raises(InputError, match=r"holds no files matching include=\['\*.rs'\]"):
        expand_inputs([str(tmp_path / "src")], staging=tmp_path / "s", include=["*.rs"])
