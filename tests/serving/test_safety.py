"""The action guard: joint limits from the dataset's range, the step limit, their order, and the logs."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from smolvla.config import ConfigError
from smolvla.serving.safety import ActionGuard, SafetyConfig, SafetyError


def test_limits_then_step_from_the_measured_position():
    g = ActionGuard(["a", "b"], max_step=5.0, low=np.array([-10.0, 0.0]), high=np.array([10.0, 100.0]))
    g.reset(np.array([0.0, 50.0]))
    assert g(np.array([3.0, 52.0])).tolist() == [3.0, 52.0]  # inside both: untouched
    assert g(np.array([30.0, 52.0])).tolist() == [8.0, 52.0]  # limit 10, then the step from 3: 8
    assert g(np.array([30.0, 52.0])).tolist() == [10.0, 52.0]
    assert g.limit_clamps == {"a": 2, "b": 0} and g.step_clamps == {"a": 1, "b": 0}
    assert g.report()["actions_clamped"] == 2 and g.actions == 3


def test_a_robot_outside_the_range_comes_back_one_step_at_a_time():
    g = ActionGuard(["a"], max_step=5.0, low=np.array([0.0]), high=np.array([10.0]))
    g.reset(np.array([-20.0]))
    assert [float(g(np.array([5.0]))[0]) for _ in range(5)] == [-15.0, -10.0, -5.0, 0.0, 5.0]


def test_unknown_reference_is_not_step_limited_and_zero_disables():
    g = ActionGuard(["a", "b"], max_step=1.0)
    g.reset(np.array([np.nan, 0.0]))
    assert g(np.array([50.0, 50.0])).tolist() == [50.0, 1.0]
    off = ActionGuard(["a"], max_step=0.0)
    off.reset(np.array([0.0]))
    assert off(np.array([1e3])).tolist() == [1e3] and off.clamped == 0


def test_clamps_are_logged_at_most_once_a_second(caplog):
    g = ActionGuard(["a"], max_step=1.0)
    g.reset(np.array([0.0]))
    with caplog.at_level(logging.WARNING, logger="smolvla.robot"):
        for _ in range(20):
            g(np.array([100.0]))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "a 100 -> 1 (step 1)" in lines[0]
    assert g.clamped == 20


def test_config_and_missing_stats_are_refused():
    with pytest.raises(ConfigError, match=r"safety\.max_step: got -1"):
        SafetyConfig(max_step=-1)
    with pytest.raises(ConfigError, match=r"safety\.server_timeout_s: got 0"):
        SafetyConfig(server_timeout_s=0)
    with pytest.raises(SafetyError, match=r"--safety\.joint_limits=false"):
        ActionGuard.from_config(SafetyConfig(), ["a"], None)
    g = ActionGuard.from_config(SafetyConfig(limit_margin=0.1), ["a"], {"min": [0.0], "max": [10.0]})
    assert g.low.tolist() == [-1.0] and g.high.tolist() == [11.0]
    assert ActionGuard.from_config(SafetyConfig(joint_limits=False), ["a"], None).low is None
