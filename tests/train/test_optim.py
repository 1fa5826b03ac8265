"""LeRobot's cosine-with-warmup schedule, auto-scaled for short runs."""

from __future__ import annotations

import math

import pytest
import torch

from smolvla.config import preset
from smolvla.train.optim import lr_factor, make_optimizer, make_scheduler, schedule_steps


def test_schedule_scaling():
    cfg = preset("base")
    assert schedule_steps(cfg, 20_000) == (666, 20_000)
    assert schedule_steps(cfg, 100_000) == (1000, 30_000)


def test_lr_factor_values():
    floor = 2.5e-6 / 1e-4
    assert lr_factor(0, 1000, 30000, floor) == pytest.approx(1 / 1001)
    assert lr_factor(500, 1000, 30000, floor) == pytest.approx((1 / 1001 - 1) * 0.5 + 1)
    # the cosine counts from step 0, so there is a small drop at the end of warm-up
    assert lr_factor(1000, 1000, 30000, floor) == pytest.approx(
        (1 - floor) * 0.5 * (1 + math.cos(math.pi / 30)) + floor
    )
    assert lr_factor(30000, 1000, 30000, floor) == pytest.approx(floor)
    assert lr_factor(40000, 1000, 30000, floor) == pytest.approx(floor)


def test_scheduler_drives_the_optimizer(micro_policy):
    cfg = micro_policy.config
    opt = make_optimizer(list(micro_policy.parameters()), cfg)
    frozen = {id(p) for p in micro_policy.parameters() if not p.requires_grad}
    assert all(id(p) not in frozen for g in opt.param_groups for p in g["params"])
    sched = make_scheduler(opt, cfg, total_steps=300)
    lrs = []
    for _ in range(300):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(cfg.optimizer_lr / 11)  # warm-up of int(1000 * 300 / 30000) = 10 steps
    assert max(lrs) <= cfg.optimizer_lr and lrs[-1] < lrs[50]


def test_everything_frozen_is_an_error(micro_policy):
    for p in micro_policy.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        make_optimizer(list(micro_policy.parameters()), micro_policy.config)
    assert torch.is_tensor(next(micro_policy.parameters()))
