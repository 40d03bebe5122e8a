"""`foundry eval` (evalkit tasks on our checkpoint and its Hugging Face export, checks before any
model loads, atomic outputs), `foundry report` (the curves read back from the figure), and
`foundry train log.mlflow=true` (a real local MLflow store). One tiny run trained once serves all."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from evalkit import EvalResults
from evalkit.testing import write_tasks
from foundry import evaluation
from foundry.cli import main
from foundry.compose import compose_config
from foundry.report import PANELS, ReportCommand, draw, load_runs
from streaming import MDSWriter

SEQ = 32
TINY = [
    "model.vocab_size=640",  # the tiny tokenizer's 600 tokens fit
    f"model.max_seq_len={SEQ}",
    "model.d_model=32",
    "model.n_heads=2",
    "model.n_layers=2",
    f"data.max_seq_len={SEQ}",
    "global_train_batch_size=4",
    "scheduler.warmup=1ba",
    "log.console_every=100",
]
HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
SHARED_EVAL = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "eval"


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """A `file:` MLflow store, with the environment MLflow 3 needs for it (and no telemetry)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        yield (tmp_path_factory.mktemp("mlflow") / "mlruns").as_uri()


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_tokenizer, mlflow_store) -> Path:
    """A save folder of `foundry train` (2 batches, with its tokenizer; MLflow when installed)."""
    root = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    with MDSWriter(out=str(root / "mds"), columns={"tokens": "ndarray:int32"}) as writer:
        for _ in range(16):
            writer.write({"tokens": rng.integers(4, 600, SEQ).astype(np.int32)})
    args = [f"data.sources.main.local={root / 'mds'}", f"save_folder={root / 'tiny'}"]
    args += [f"tokenizer={tiny_tokenizer}", "max_duration=2ba"]
    if HAS_MLFLOW:
        args += ["log.mlflow=true", f"log.mlflow_tracking_uri={mlflow_store}"]
        args += ["log.mlflow_experiment=foundry-test"]
    assert main(["train", *TINY, *args]) == 0
    return root / "tiny"


@pytest.fixture(scope="module")
def hf_dir(run, tiny_tokenizer) -> Path:
    """The run's model exported to a Hugging Face MPT folder, with the tokenizer beside it."""
    from foundry.checkpoints import load_trained
    from mpt.hf import export_hf

    model, _ = load_trained(str(run))
    out = run.parent / "hf"
    export_hf(model, None, out)
    shutil.copy(tiny_tokenizer / "tokenizer.json", out / "tokenizer.json")
    return out


@pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow-skinny (composer-lite[mlflow]) not installed")
def test_train_logs_to_an_mlflow_run(run, mlflow_store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_store)
    experiment = client.get_experiment_by_name("foundry-test")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "tiny"
    assert found.data.params["max_duration"] == "2ba"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()[1:]]
    losses = {r["step"]: r["metrics"]["loss/train/total"] for r in records if "metrics" in r}
    history = client.get_metric_history(found.info.run_id, "loss/train/total")
    assert {m.step: m.value for m in history} == pytest.approx(losses) and len(losses) == 2
    files = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert files == {"metrics.jsonl", "foundry_config.yaml"}


def test_eval_of_our_checkpoint_and_its_hf_export(run, hf_dir, tmp_path, capsys):
    tasks = write_tasks(tmp_path / "icl", n=4)
    out = tmp_path / "out"
    args = [f"models=[{run},{hf_dir}]", f"tasks={tasks}", "only=[lm,mc]", "limit=2", f"out={out}"]
    assert main(["eval", *args, "progress=false"]) == 0
    printed = capsys.readouterr().out
    assert "| task | type | metric | examples | tiny | hf |" in printed
    ours = EvalResults.load(out / "results_tiny.json")
    theirs = EvalResults.load(out / "results_hf.json")
    assert sorted(ours.tasks) == ["lm/0-shot", "lm/2-shot", "mc/1-shot"]
    # the same weights and tokenizer (ours from the run's config, the HF dir's own file)
    for name, task in ours.tasks.items():
        mine = [x for e in task.examples for x in e.logprobs]
        other = [x for e in theirs.tasks[name].examples for x in e.logprobs]
        assert mine == pytest.approx(other, abs=1e-4), name
    assert (out / "report.md").read_text().startswith("## Tasks")
    import matplotlib.image

    assert matplotlib.image.imread(out / "eval.png").ndim == 3
    assert yaml.safe_load((out / "foundry_config.yaml").read_text())["limit"] == 2
    assert sorted(p.name for p in out.iterdir()) == [  # nothing partial left behind
        "eval.png",
        "foundry_config.yaml",
        "report.md",
        "results_hf.json",
        "results_tiny.json",
    ]
    before = (out / "report.md").stat().st_mtime_ns
    assert main(["eval", *args]) == 1  # the outputs exist: refused before any model loads
    err = capsys.readouterr().err
    assert f"out={out} already holds" in err and "overwrite=true" in err
    assert (out / "report.md").stat().st_mtime_ns == before


def _eval_error(capsys, *args: str) -> str:
    assert main(["eval", *args]) == 1
    return capsys.readouterr().err


def test_eval_names_what_is_missing_before_loading_any_model(
    run, hf_dir, tmp_path, capsys, monkeypatch
):
    tasks = write_tasks(tmp_path / "icl", n=2)
    good = f"models=[{run}]"
    err = _eval_error(capsys, good, f"tasks={tmp_path / 'none.yaml'}")
    assert "none.yaml: no such file" in err and "seed_table" in err
    err = _eval_error(capsys, good, "tasks=seed_table", f"eval_root={tmp_path}")
    assert f"under eval_root={tmp_path}, which does not exist" in err
    err = _eval_error(capsys, f"models=[{run},{tmp_path / 'gone'}]", f"tasks={tasks}")
    assert f"models[1]: {tmp_path / 'gone'} does not exist" in err
    err = _eval_error(capsys, f"models=[{run},{tmp_path / 'icl'}]", f"tasks={tasks}")
    assert f"models[1]: {tmp_path / 'icl'} is neither a foundry save folder" in err
    unsaved = tmp_path / "unsaved"  # a save folder whose run saved no checkpoint
    unsaved.mkdir()
    shutil.copy(run / "foundry_config.yaml", unsaved)
    err = _eval_error(capsys, f"models=[{run},{unsaved}]", f"tasks={tasks}")
    assert f"models[1]: {unsaved} holds no complete checkpoint yet" in err
    bare = tmp_path / "bare"  # an HF folder without tokenizer.json
    shutil.copytree(hf_dir, bare, ignore=shutil.ignore_patterns("tokenizer.json"))
    err = _eval_error(capsys, f"models=[{run},{bare}]", f"tasks={tasks}")
    assert f"models[1]: {bare} has no tokenizer.json: give tokenizer=" in err
    moved = tmp_path / "moved"  # a run whose tokenizer is not where its config says
    shutil.copytree(run, moved)
    config = yaml.safe_load((moved / "foundry_config.yaml").read_text())
    config["tokenizer"] = str(tmp_path / "tok-elsewhere")
    (moved / "foundry_config.yaml").write_text(yaml.safe_dump(config))
    err = _eval_error(capsys, f"models=[{moved}]", f"tasks={tasks}")
    assert "the tokenizer of" in err and "tok-elsewhere" in err and "give tokenizer=" in err
    err = _eval_error(capsys, f"models=[{run},{hf_dir}]", f"tasks={tasks}", "names=[a,a]")
    assert "two models are named ['a']" in err
    taken = tmp_path / "taken.md"  # out= names a file, not a folder: refused before evaluating
    taken.write_text("mine")
    with monkeypatch.context() as patch:
        patch.setattr(evaluation, "evaluate_models", lambda *a: pytest.fail("evaluated"))
        err = _eval_error(capsys, good, f"tasks={tasks}", f"out={taken}", "overwrite=true")
    assert f"out={taken} is a file" in err
    assert taken.read_text() == "mine"
    assert not list(tmp_path.glob("*.json"))  # nothing written


@pytest.mark.skipif(not SHARED_EVAL.is_dir(), reason=f"{SHARED_EVAL} is absent (../shared/data)")
def test_eval_with_the_shipped_task_list_and_gauntlet(run, tmp_path, capsys):
    args = [f"models=[{run}]", "tasks=seed_table", "gauntlet=v0.3", f"eval_root={SHARED_EVAL}"]
    args += ["only=[copa]", "limit=2", f"out={tmp_path / 'out'}", "progress=false"]
    assert main(["eval", *args]) == 0
    printed = capsys.readouterr().out
    assert "| copa/0-shot | multiple_choice |" in printed and "## Gauntlet" in printed
    assert (tmp_path / "out" / "eval.png").is_file()


def _jsonl(path: Path, records: list[tuple[int, dict]]) -> Path:
    from composer_lite.loggers import JSONLLogger

    logger = JSONLLogger(path)
    for step, metrics in records:
        logger.log_metrics(metrics, step)
    logger.close()
    return path


def _lines(ax) -> dict[str, tuple[list, list]]:
    return {
        line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
        for line in ax.get_lines()
    }


def test_report_draws_loss_lr_and_throughput_of_each_run(run, tmp_path, capsys):
    # a run that logged only its loss, resumed from batch 1: steps 2 and 3 again, the last counts
    steps = [(1, 5.0), (2, 4.5), (3, 4.0), (2, 4.2), (3, 3.4), (4, 3.0)]
    logs = tmp_path / "logs"
    _jsonl(logs / "metrics.jsonl", [(s, {"loss/train/total": v}) for s, v in steps])
    _jsonl(logs / "metrics.jsonl", [(4, {"eval/loss": 3.1})])
    other = tmp_path / "other"  # a save folder whose config sends its logs to log.log_dir
    other.mkdir()
    (other / "foundry_config.yaml").write_text(yaml.safe_dump({"log": {"log_dir": str(logs)}}))
    png = tmp_path / "curves.png"
    assert main(["report", str(run), str(other), f"out={png}"]) == 0  # foundry report RUN...
    assert f"wrote {png}" in capsys.readouterr().out
    import matplotlib.image

    assert matplotlib.image.imread(png).ndim == 3
    cfg = compose_config("report", [f"runs=[{run},{other}]", f"out={png}", "overwrite=true"])
    loss, lr, speed = draw(load_runs(cfg.build(ReportCommand))).axes
    assert [ax.get_title() for ax in (loss, lr, speed)] == [title for _, title, _ in PANELS]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()[1:]]
    metrics = {r["step"]: r["metrics"] for r in records if "metrics" in r}
    drawn = _lines(loss)
    assert drawn["tiny"] == (
        [1.0, 2.0],
        [metrics[1]["loss/train/total"], metrics[2]["loss/train/total"]],
    )
    assert drawn["other"] == ([1.0, 2.0, 3.0, 4.0], [5.0, 4.2, 3.4, 3.0])
    assert drawn["other eval"] == ([4.0], [3.1])
    lr_key = next(k for k in metrics[1] if k.startswith("lr-"))
    assert _lines(lr) == {"tiny": ([1.0, 2.0], [metrics[1][lr_key], metrics[2][lr_key]])}
    assert list(_lines(speed)) == ["tiny"]
    assert [t.get_text() for t in lr.texts] == [t.get_text() for t in speed.texts]
    assert [t.get_text() for t in speed.texts] == ["not logged by: other"]
    # x in tokens: the run's config says 4 x 32 tokens per step
    tokens = compose_config("report", [f"runs=[{run}]", "x=tokens", f"out={png}", "overwrite=true"])
    (loss, _, speed) = draw(load_runs(tokens.build(ReportCommand)), x="tokens").axes
    assert _lines(loss)["tiny"][0] == [128.0, 256.0] and speed.get_xlabel() == "tokens"
    (_, lr, _) = draw(load_runs(ReportCommand(runs=[str(other)]))).axes
    assert [t.get_text() for t in lr.texts] == ["no run logged a learning rate"]


def test_report_names_what_it_cannot_find(run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    png = tmp_path / "curves.png"
    assert main(["report", f"runs=[{tmp_path / 'gone'},{empty},{run}]", f"out={png}"]) == 1
    err = capsys.readouterr().err
    assert f"runs[0]: {tmp_path / 'gone'} holds no metrics.jsonl (no such folder)" in err
    assert f"runs[1]: {empty} holds no metrics.jsonl (looked at {empty}/metrics.jsonl)" in err
    assert not png.exists()
    bare = _jsonl(tmp_path / "bare.jsonl", [(1, {"loss/train/total": 1.0})])
    assert main(["report", f"runs=[{run},{bare}]", "x=tokens", f"out={png}"]) == 1
    assert "runs[1] (bare, " in capsys.readouterr().err  # no token counts: use x=steps
    png.write_bytes(b"not ours")
    assert main(["report", f"runs=[{run}]", f"out={png}"]) == 1
    assert f"out={png} exists" in capsys.readouterr().err and png.read_bytes() == b"not ours"
