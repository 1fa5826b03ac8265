"""The one stats validation: real stats pass (including float32 rounding), impossible ones name the stat."""

from __future__ import annotations

import numpy as np
import pytest

from smolvla.data.stats import aggregate_stats, histogram_stats, vector_stats
from smolvla.errors import SmolVLAError
from smolvla.stats_check import validate_stats


def test_computed_stats_pass_in_float64_and_float32():
    rng = np.random.default_rng(0)
    episodes = [{"action": vector_stats(rng.normal(size=(50, 6)) * s + s)} for s in (0.1, 3.0, 100.0)]
    episodes.append({"action": vector_stats(np.ones((7, 6)))})  # constant: std 0, min == mean == max
    stats = aggregate_stats(episodes)
    hist = np.stack([np.bincount(rng.integers(0, 256, 999), minlength=256) for _ in range(3)])
    stats["cam"] = histogram_stats(hist, 3)
    validate_stats(stats, {"action": (6,), "cam": (3, 8, 8)})
    as32 = {f: {k: v.astype(np.float32) for k, v in s.items()} for f, s in stats.items()}
    validate_stats(as32, {"action": (6,), "cam": (3, 8, 8)})


def test_float_rounding_is_not_a_contradiction_but_a_real_inversion_is():
    validate_stats({"x": {"min": [1.0], "mean": [1.0 + 1e-9], "max": [1.0]}})
    with pytest.raises(SmolVLAError, match=r"stats\['x'\]: mean > max at index 0 \(1.1 > 1\)"):
        validate_stats({"x": {"min": [1.0], "mean": [1.1], "max": [1.0]}})


@pytest.mark.parametrize(
    ("sub", "match"),
    [
        ({"std": ["a"]}, r"\['x'\]\['std'\]: got \['a'\], expected an array of numbers"),
        ({"std": [np.inf]}, r"\['x'\]\['std'\] is not finite: \[inf\]"),
        ({"q10": [1.0], "q90": [0.0]}, r"q10 > q90"),
        (
            {"mean": [0.0], "std": [1.0, 1.0]},
            r"\['x'\]\['std'\] has shape \(2,\), but \['mean'\] has shape \(1,\)",
        ),
    ],
)
def test_impossible_stats_name_feature_and_stat(sub, match):
    with pytest.raises(SmolVLAError, match=match):
        validate_stats({"x": sub})


def test_the_callers_error_class_is_raised():
    class Mine(SmolVLAError):
        pass

    with pytest.raises(Mine):
        validate_stats({"x": {"std": [-1.0]}}, error=Mine)


def test_stats_range_is_the_finite_ordered_min_max_or_none():
    from smolvla.stats_check import stats_range

    assert stats_range({"min": [0, -1], "max": [1, 2], "mean": [0, 0]}, 2) == {
        "min": [0.0, -1.0],
        "max": [1.0, 2.0],
    }
    for bad in (
        None,
        [],
        "minmax",
        {"min": [0, 1]},
        {"min": [0], "max": [1]},
        {"min": [0, 3], "max": [1, 2]},
        {"min": [0, float("nan")], "max": [1, 2]},
        {"min": ["a", "b"], "max": [1, 2]},
    ):
        assert stats_range(bad, 2) is None, bad
