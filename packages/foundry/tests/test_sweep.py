"""`foundry sweep`: the fit recovers a planted power law, a tiny CPU sweep predicts the loss of
the next size up (checked against a real run of it), a rerun trains nothing, and bad sweeps are
refused before any training, each naming the setting."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from foundry.cli import main
from foundry.compose import compose_config
from foundry.data.prep import prepare
from foundry.scaling import FitError, compute_frontier, fit_power_law, t_quantile
from foundry.schema import DataPrepCommand
from foundry.sweep import Point
from foundry.sweep_results import PointResult, SweepError, fit_points, read_results
from mpt import MPTConfig

from .conftest import WORDS

SEQ = 32
STEP_TOKENS = 8 * SEQ  # global_train_batch_size x max_seq_len
TINY = [
    "model.vocab_size=640",  # the tiny tokenizer's 600 tokens, padded
    f"model.max_seq_len={SEQ}",
    "model.n_heads=2",
    f"max_seq_len={SEQ}",
    "global_train_batch_size=8",
    "optimizer.lr=5e-3",
    "eval_batches=16",
    "console_every=1000",
    "sizes=[{d_model:16,n_layers:2},{d_model:32,n_layers:2},{d_model:48,n_layers:2}]",
    f"tokens=[{24 * STEP_TOKENS},{48 * STEP_TOKENS}]",  # 24 and 48 steps
    "target.d_model=64",
    "target.n_layers=2",
    f"target_tokens={72 * STEP_TOKENS}",  # the larger run gets more of both N and D
]


# ----------------------------------------------------------------------------- the fit alone


def test_planted_power_law_exponent_is_recovered_within_5_percent():
    # an irreducible loss and a Chinchilla-like exponent; the rest falls from 1.5 to 0.1
    e, a, alpha = 1.69, 2e5, 0.3
    compute = np.geomspace(1e17, 1e21, 12)
    covered = 0
    for seed in range(20):
        # 0.3% noise: held-out losses of real sweeps are this precise (about +-0.005 at 1.7-3)
        noise = 1 + 0.003 * np.random.default_rng(seed).standard_normal(len(compute))
        fit = fit_power_law(compute, (e + a * compute**-alpha) * noise)
        assert abs(fit.alpha - alpha) / alpha < 0.05, (seed, fit.formula())
        assert abs(fit.e - e) < 4 * fit.e_err and abs(fit.alpha - alpha) < 4 * fit.alpha_err
        beyond = fit.predict(1e22)  # ten times the largest compute
        covered += beyond.covers(e + a * 1e22**-alpha)
    assert covered >= 17  # a 95% interval: about 19 of 20 (binomial: >= 17 with p > 0.98)


def test_fit_without_noise_is_exact_and_bad_points_are_named():
    compute = np.geomspace(1e9, 1e13, 6)
    fit = fit_power_law(compute, 2.0 + 5e3 * compute**-0.5)
    assert fit.alpha == pytest.approx(0.5, rel=1e-6) and fit.e == pytest.approx(2.0, rel=1e-6)
    assert fit.a == pytest.approx(5e3, rel=1e-5)
    with pytest.raises(FitError, match="at least 4 points, got 3"):
        fit_power_law(compute[:3], np.ones(3))
    with pytest.raises(FitError, match="every compute must be positive"):
        fit_power_law(np.array([1.0, -2, 3, 4]), np.ones(4))
    with pytest.raises(FitError, match="does not fall with compute"):
        fit_power_law(compute, 2.0 + 1e-3 * np.log(compute))  # rises: no positive A


def test_points_without_a_floor_hold_e_at_its_bound():
    # log-linear points (the alpha -> 0 limit) pin down no floor: unbounded, E would run off to
    # minus infinity with A to plus infinity; a loss is never negative, so E stays at 0
    compute = np.geomspace(1e9, 1e11, 6)
    fit = fit_power_law(compute, 9 - 0.15 * np.log(compute))
    assert fit.e_at_bound and fit.e == 0 and fit.e_err == 0 and fit.dof == 4
    assert 0 < fit.alpha < 0.1 and "L = 0 (at its bound) + " in fit.formula()
    assert fit.predict(1e12).loss == pytest.approx(9 - 0.15 * np.log(1e12), rel=0.02)


def test_t_quantiles_match_the_tables():
    # two-sided 95% points of Student's t (any statistics table)
    for dof, value in ((1, 12.706), (3, 3.182), (10, 2.228), (30, 2.042)):
        assert t_quantile(0.975, dof) == pytest.approx(value, abs=2e-3)


def _result(name: str, compute: float, loss: float) -> PointResult:
    return PointResult(
        name=name,
        role="sweep",
        d_model=16,
        n_layers=2,
        n_heads=2,
        params=1,
        non_embedding_params=1,
        steps=1,
        tokens=1,
        compute=compute,
        eval_loss=loss,
        train_loss=None,
        seconds=0.0,
        settings="x",
    )


def test_frontier_keeps_the_points_no_cheaper_point_beats(tmp_path):
    compute = np.array([4.0, 1.0, 2.0, 3.0, 5.0])
    loss = np.array([2.5, 4.0, 3.0, 3.5, 2.0])  # the point at 3.0 is beaten by the one at 2.0
    assert compute_frontier(compute, loss).tolist() == [1, 2, 0, 4]
    # fit_on=frontier fits those points alone
    results = [_result(f"p{i}", c, 2 + 30 * c**-0.5) for i, c in enumerate([1e2, 1e3, 1e4, 1e5])]
    results.insert(2, _result("beaten", 5e3, 3.0))
    model = MPTConfig(d_model=64, n_heads=2, n_layers=2, vocab_size=640, max_seq_len=SEQ)
    target = Point(name="t", role="target", model=model, lr=None, steps=1, tokens=10)
    summary = fit_points(results, target, fit_on="frontier", level=0.95)
    assert summary.fitted == ("p0", "p1", "p2", "p3") and summary.fit.alpha == pytest.approx(0.5)
    everything = fit_points(results, target, fit_on="all", level=0.95)
    assert "beaten" in everything.fitted and everything.fit.alpha != pytest.approx(0.5)
    with pytest.raises(SweepError, match="fit_on=frontier: 3 of the 5 points to fit"):
        fit_points(
            results[:-1] + [_result("worse", 1e6, 9.0)], target, fit_on="frontier", level=0.9
        )
    # sweep.jsonl: a last line cut short is skipped; a record of another format is refused
    path = tmp_path / "sweep.jsonl"
    path.write_text(_result("a", 1.0, 3.0).to_json() + "\n" + '{"format": 1, "na')
    assert list(read_results(str(tmp_path))) == ["a"]
    path.write_text('{"format": 2, "name": "a"}\n')
    with pytest.raises(SweepError, match="record format 2, but this foundry reads format 1"):
        read_results(str(tmp_path))


# ----------------------------------------------------------------------------- a real CPU sweep


def bigram_text(successors: np.ndarray, zipf: np.ndarray, *, seed: int, lines: int) -> str:
    """Lines of 99 words of a bigram language: each word's successor is drawn from a Zipf law
    over that word's own ordering of the words (`successors[word]`)."""
    draw = np.random.default_rng(seed)
    out = []
    for _ in range(lines):
        word, words = int(draw.integers(len(zipf))), []
        for rank in draw.choice(len(zipf), 99, p=zipf):
            words.append(WORDS[word])
            word = int(successors[word, rank])
        out.append(" ".join(words))
    return "\n".join(out) + "\n"


@pytest.fixture(scope="session")
def sweep_data(tmp_path_factory, tiny_tokenizer) -> tuple[Path, Path]:
    """A bigram language over 400 of the tiny tokenizer's words (a Zipf law over successors,
    so that more compute keeps learning more of the table), prepared by `foundry data prep`
    into training and held-out rows of 32 tokens."""
    root = tmp_path_factory.mktemp("sweep_data")
    vocab, rng = 400, np.random.default_rng(0)
    zipf = 1 / np.arange(1, vocab + 1) ** 1.1
    zipf /= zipf.sum()
    successors = np.stack([rng.permutation(vocab) for _ in range(vocab)])
    for split, seed, lines in (("train", 1, 240), ("val", 2, 60)):
        (root / f"{split}.txt").write_text(bigram_text(successors, zipf, seed=seed, lines=lines))
        overrides = [f"inputs=[{root / f'{split}.txt'}]", f"out={root / split}"]
        overrides += [f"tokenizer={tiny_tokenizer}", f"max_seq_len={SEQ}", "text_unit=line"]
        overrides += ["progress=false", "num_proc=1", "dedup.near=false"]
        prepare(compose_config("data_prep", overrides).build(DataPrepCommand))
    return root / "train", root / "val"


def sweep(data: tuple[Path, Path], out: Path, *more: str) -> tuple[int, str, str]:
    """`foundry sweep` on the tiny data; (exit status, stdout, stderr)."""
    args = [f"data.local={data[0]}", f"eval_data.local={data[1]}", f"out={out}", *TINY, *more]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(["sweep", *args])
    return status, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny shapes run faster on one thread than on two contended ones (and alike on any CPU)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def swept(sweep_data, tmp_path_factory, one_thread, tiny_tokenizer) -> tuple[Path, str]:
    """3 sizes x 2 budgets, and the next size up trained for real (7 tiny runs)."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    status, stdout, stderr = sweep(
        sweep_data, out, "train_target=true", f"tokenizer={tiny_tokenizer}"
    )
    assert status == 0, stderr[-3000:]
    return out, stdout


def test_cpu_sweep_predicts_the_next_size_up(swept):
    out, stdout = swept
    fit = json.loads((out / "fit.json").read_text())
    target = fit["target"]
    print(stdout)  # the table, the fit and the measured error, for the record (pytest -s)
    assert len(fit["points"]) == 6 and target["name"] == "d64-l2-h2-18432tok"
    # C = 6 N D with N the non-embedding parameters of the target's shape, D its tokens
    shape = MPTConfig(d_model=64, n_heads=2, n_layers=2, vocab_size=640, max_seq_len=SEQ)
    n = shape.num_params(include_embedding=False)
    assert target["non_embedding_params"] == n and target["compute"] == 6 * n * 72 * STEP_TOKENS
    assert 0 < fit["alpha"] and fit["E"] < min(r.eval_loss for r in read_results(str(out)).values())
    # The target's real run against the prediction. A single tiny run scatters about the law by
    # the points' residual std (0.12 at losses 2.7-5: the seed and a few dozen steps), so two
    # standard deviations are ~9% of the loss: the measured loss must lie in the 95% prediction
    # interval and within 10% of the prediction (measured: 2.619 for 2.484 predicted, +5.2%).
    measured, predicted = target["measured_loss"], target["predicted_loss"]
    assert target["interval"][0] <= measured <= target["interval"][1]
    assert abs(measured - predicted) / measured < 0.10
    assert "L = " in stdout and "C^-(" in stdout and "inside the interval" in stdout
    for name in fit["points"]:  # every point in its own save folder, with its checkpoint
        assert name in stdout and list((out / "points" / name).glob("ep*"))
    png = (out / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_each_point_is_a_train_config_of_its_size_and_budget(tmp_path):
    from foundry.sweep import SweepCommand, plan_points, point_command

    # the first size takes the model's depth (mpt_tiny's 4 layers), the second its own settings
    sizes = "sizes=[{d_model:16},{d_model:32,n_layers:3,n_heads:4,lr:2e-3},{d_model:48,n_layers:2}]"
    overrides = ["data.local=d", "eval_data.local=v", f"out={tmp_path}", *TINY, sizes]
    cfg = compose_config("sweep", overrides).build(SweepCommand)
    points, target = plan_points(cfg)
    assert [p.compute for p in points] == sorted(p.compute for p in points)
    by_name = {p.name: point_command(cfg, p) for p in points}
    run = by_name["d32-l3-h4-12288tok"]  # its own depth, heads and learning rate
    assert (run.model.n_layers, run.model.n_heads, run.optimizer.lr) == (3, 4, 2e-3)
    assert run.max_duration == "48ba" and run.eval_interval == "1dur"
    assert run.save_folder == str(tmp_path / "points" / "d32-l3-h4-12288tok")
    other = by_name["d16-l4-h2-6144tok"]
    assert (other.optimizer.lr, other.max_duration) == (5e-3, "24ba")
    assert target.name == "d64-l2-h2-18432tok" and target.steps == 72


class CountingTrainPoint:
    """`foundry.sweep.train_point`, noting the name of each point it trains."""

    def __init__(self, train_point) -> None:
        self.train_point = train_point
        self.names: list[str] = []

    def __call__(self, cfg, point):
        self.names.append(point.name)
        return self.train_point(cfg, point)


def test_a_rerun_trains_nothing_and_an_unfinished_point_resumes(swept, sweep_data, tmp_path):
    import foundry.sweep as sweep_module

    out = tmp_path / "out"
    shutil.copytree(swept[0], out)  # the folder moved: its points are still read back
    counting = CountingTrainPoint(sweep_module.train_point)
    trained = counting.names
    args = ["train_target=true"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sweep_module, "train_point", counting)
        status, stdout, stderr = sweep(sweep_data, out, *args)
        assert status == 0, stderr[-3000:]
        assert trained == []
        report = stdout[stdout.index("sweep results:") : stdout.index("plot:")]
        assert report == swept[1][swept[1].index("sweep results:") : swept[1].index("plot:")]
        # a sweep killed after training its last point, before recording it: that point alone
        lines = (out / "sweep.jsonl").read_text().splitlines()
        (out / "sweep.jsonl").write_text("\n".join(lines[:-1]) + "\n")
        status, stdout, stderr = sweep(sweep_data, out, *args)
        assert status == 0, stderr[-3000:]
        assert trained == ["d64-l2-h2-18432tok"]  # from its last checkpoint: evaluated again
        again = json.loads((out / "sweep.jsonl").read_text().splitlines()[-1])
        assert again["eval_loss"] == json.loads(lines[-1])["eval_loss"]  # the same weights
    # other settings in the same folder are refused, before any training: a recorded point,
    # and an unrecorded one whose save folder would be resumed
    status, _, stderr = sweep(sweep_data, out, "optimizer.lr=1e-3")
    assert status == 1 and "holds d16-l2-h2-6144tok trained with other settings" in stderr
    (out / "sweep.jsonl").unlink()
    status, _, stderr = sweep(sweep_data, out, "optimizer.lr=1e-3")
    assert status == 1 and "d16-l2-h2-6144tok holds a run trained with other settings" in stderr


@pytest.mark.parametrize(
    ("overrides", "status", "message"),
    [
        (
            ["sizes=[{d_model:16},{d_model:32},{d_model:32}]"],
            1,
            "sizes: 3 size(s) of which 2 distinct; a fit of loss against compute needs at least 3",
        ),
        (
            ["sizes=[{d_model:16},{d_model:33},{d_model:48}]"],
            1,
            "sizes[1]: invalid MPTConfig: d_model 33 is not divisible by n_heads 2",
        ),
        (["target.d_model=48"], 1, "target: 55536 non-embedding parameters, not more than"),
        (["tokens=[100,2048]"], 1, "tokens[0]=100 is 100 tokens, less than one step of 256"),
        (["tokens=[2048]"], 1, "sizes x tokens: 3 x 1 = 3 points; a fit of E, A and alpha"),
        (["eval_data.local=/nowhere"], 1, "/nowhere holds no prepared dataset"),
        (["max_seq_len=16"], 1, "data: its rows hold 32 tokens, but max_seq_len is 16"),
        (["model.vocab_size=64"], 1, "has 600 tokens but model.vocab_size=64"),
        (["hardware=8xh100"], 1, "hardware has 8 ranks: foundry sweep trains each point in one"),
        (["sizes=[{d_modle:16}]"], 2, "sizes[0].d_modle: unknown key; did you mean 'd_model'?"),
        (["fit_on=best"], 2, "fit_on: expected"),
    ],
)
def test_bad_sweeps_are_refused_before_any_training(
    sweep_data, tmp_path, tiny_tokenizer, overrides, status, message
):
    out = tmp_path / "out"
    got, _, stderr = sweep(sweep_data, out, f"tokenizer={tiny_tokenizer}", *overrides)
    assert got == status and message in stderr, stderr[-2000:]
    assert not out.exists()  # nothing trained, nothing written
