"""Learning-rate schedules and the Trainer's config checks."""

import pytest
import torch

from composer_lite import Schedule, Time, TrainerConfig
from composer_lite.schedulers import cosine, linear


def test_schedules_warm_up_then_decay():
    assert [round(cosine(s, 4, 12, 0.1), 4) for s in (0, 3)] == [0.25, 1.0]
    assert cosine(12, 4, 12, 0.1) == pytest.approx(0.1)
    assert linear(8, 4, 12, 0.0) == pytest.approx(0.5)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = Schedule(name="linear", warmup="2ba").build(
        opt, lambda t: int(t.value), Time.parse("10ba")
    )
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([1.0, 2.0, 2.0])
    assert lrs[-1] == pytest.approx(2.0 * 1 / 8)
    with pytest.raises(ValueError, match="unknown schedule 'stepwise'"):
        Schedule(name="stepwise")
    with pytest.raises(ValueError, match="longer than the schedule"):
        Schedule(warmup="20ba").build(opt, lambda t: int(t.value), Time.parse("10ba"))


def test_config_names_every_unknown_key_and_bad_values():
    with pytest.raises(ValueError, match=r"unknown Trainer.Config keys \['lr', 'max_epochs'\]"):
        TrainerConfig.from_dict({"max_duration": "1ep", "max_epochs": 2, "lr": 0.1})
    with pytest.raises(ValueError, match="needs max_duration"):
        TrainerConfig.from_dict({})
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        TrainerConfig(max_duration="1ep", precision="fp8")
    with pytest.raises(ValueError, match="positive int, 'auto' or None"):
        TrainerConfig(max_duration="1ep", device_train_microbatch_size=0)
    with pytest.raises(ValueError, match="cannot be in 'dur'"):
        TrainerConfig(max_duration="0.5dur")
    with pytest.raises(ValueError, match="autoresume=True needs a save_folder"):
        TrainerConfig(max_duration="1ep", autoresume=True)
    cfg = TrainerConfig(max_duration="100ba", save_interval="10ba")
    assert cfg.max_duration == Time.parse("100ba")
    assert cfg.to_dict()["save_interval"] == "10ba"
