"""Settings that meant something else or nothing are refused (or warned about) where they are
given: bare numbers as times, eval intervals that never come, bad seeds, composer's spellings."""

from __future__ import annotations

import pytest
import torch

from composer_lite import Trainer, TrainerConfig
from composer_lite.testing import TinyLM, random_lm_batch


def _trainer(data, **options):
    model = TinyLM()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Trainer(model, data, optimizer, loggers=[], default_callbacks=False, **options)


@pytest.mark.parametrize("name", ["max_duration", "eval_interval", "save_interval", "log_interval"])
def test_a_bare_number_as_a_time_is_refused_with_the_unit_strings(name):
    options = {"max_duration": "10ba", name: 3}
    with pytest.raises(ValueError, match=rf"{name}=3 has no unit.*composer counts a bare number"):
        TrainerConfig(**options)  # was: 3 batches, where composer means 3 epochs
    with pytest.raises(ValueError, match=r"'3ep', '3ba', '3sp', '3tok'"):
        TrainerConfig.from_dict(options)
    assert TrainerConfig(**{**options, name: "3ba"}).to_dict()[name] == "3ba"


@pytest.mark.parametrize(
    ("interval", "max_duration"), [("1.5dur", "10ba"), ("20ba", "10ba"), ("3ep", "2ep")]
)
def test_an_eval_interval_longer_than_the_run_is_refused(interval, max_duration):
    with pytest.raises(ValueError, match=rf"eval_interval {interval} is longer than the whole run"):
        TrainerConfig(max_duration=max_duration, eval_interval=interval)
    # at the end only, said on purpose
    assert TrainerConfig(max_duration=max_duration, eval_interval="1dur").eval_interval.value == 1


def test_an_eval_interval_beyond_the_run_in_another_unit_is_warned_about():
    data = [random_lm_batch(4, 6, seed=i) for i in range(8)]  # an epoch of 8 batches
    with pytest.warns(UserWarning, match=r"eval_interval 1ep is longer than the run .*8 batches"):
        _trainer(data, eval_dataloader=data[:1], max_duration="5ba", eval_interval="1ep")
    with pytest.warns(UserWarning, match=r"eval_interval 20ba is longer than the run"):
        _trainer(data, eval_dataloader=data[:1], max_duration="2ep", eval_interval="20ba")


@pytest.mark.parametrize("seed", ["x", "17", 1.5, -1, True, 2**64])
def test_a_seed_that_is_not_an_int_is_refused_by_name(seed):
    with pytest.raises(ValueError, match=r"seed=.*expected an int from 0 to 2\*\*63 - 1"):
        TrainerConfig(max_duration="1ba", seed=seed)  # was: a TypeError deep in seeding


def test_composers_keyword_spellings_name_ours():
    model = TinyLM()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [random_lm_batch(4, 6, seed=0)]
    with pytest.raises(
        ValueError,
        match=r"unknown Trainer.Config keys \['deterministic_mode', 'optimizers', 'schedulers'\] "
        r"\(composer's names; here: deterministic_mode -> deterministic; optimizers -> optimizer "
        r".*; schedulers -> scheduler",
    ):  # was: TypeError: missing 1 required positional argument: 'optimizer'
        Trainer(
            model=model,
            train_dataloader=data,
            optimizers=optimizer,
            max_duration="1ba",
            schedulers=None,
            deterministic_mode=True,
        )
    with pytest.raises(TypeError, match="Trainer needs an optimizer: the third argument"):
        Trainer(model=model, train_dataloader=data, max_duration="1ba")
    with pytest.raises(ValueError, match=r"fsdp_config -> parallelism"):
        TrainerConfig.from_dict({"max_duration": "1ba", "fsdp_config": {}})
    with pytest.raises(ValueError, match=r"device='gpu' is composer's name; .* 'cuda'"):
        TrainerConfig(max_duration="1ba", device="gpu")
    trainer = Trainer(
        model=model,
        train_dataloader=data,
        optimizer=optimizer,
        max_duration="1ba",
        loggers=[],
        default_callbacks=False,
    )
    trainer.fit()
    assert trainer.state.timestamp.batch == 1
