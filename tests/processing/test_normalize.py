"""Normalizer math (LeRobot's, spec §4.2), its strict stats checks, and the stats helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from smolvla.config import FeatureType, NormMode, PolicyFeature
from smolvla.processing.normalize import (
    MissingStatsError,
    Normalizer,
    StatsError,
    flatten_stats,
    load_stats,
    unflatten_stats,
)

STATE = PolicyFeature(FeatureType.STATE, (3,))
ACTION = PolicyFeature(FeatureType.ACTION, (3,))
IMAGE = PolicyFeature(FeatureType.VISUAL, (3, 4, 4))


def full_stats() -> dict[str, torch.Tensor]:
    return {
        "mean": torch.tensor([0.5, -1.0, 2.0]),
        "std": torch.tensor([2.0, 0.5, 1.0]),
        "min": torch.tensor([-1.0, -3.0, 2.0]),
        "max": torch.tensor([3.0, 1.0, 2.0]),  # dim 2: max == min
        "q01": torch.tensor([-0.9, -2.5, 1.0]),
        "q99": torch.tensor([2.9, 0.5, 3.0]),
        "q10": torch.tensor([-0.5, -2.0, 1.5]),
        "q90": torch.tensor([2.5, 0.0, 2.5]),
    }


@pytest.mark.parametrize(
    "mode", [NormMode.MEAN_STD, NormMode.MIN_MAX, NormMode.QUANTILES, NormMode.QUANTILE10]
)
def test_formulas_and_inverse(mode: NormMode) -> None:
    s = full_stats()
    n = Normalizer({"observation.state": STATE}, {"STATE": mode}, {"observation.state": s}, eps=1e-8)
    x = torch.randn(5, 3, dtype=torch.float64)
    y = n.normalize({"observation.state": x})["observation.state"]
    s64 = {k: v.double() for k, v in s.items()}
    if mode == NormMode.MEAN_STD:
        want = (x - s64["mean"]) / (s64["std"] + 1e-8)
    else:
        lo, hi = {
            NormMode.MIN_MAX: ("min", "max"),
            NormMode.QUANTILES: ("q01", "q99"),
            NormMode.QUANTILE10: ("q10", "q90"),
        }[mode]
        d = s64[hi] - s64[lo]
        d = torch.where(d == 0, torch.tensor(1e-8, dtype=torch.float64), d)
        want = 2 * (x - s64[lo]) / d - 1
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, want)
    back = n.unnormalize({"observation.state": y})["observation.state"]
    torch.testing.assert_close(back, x)


def test_mean_std_inverse_has_no_eps() -> None:
    s = {"mean": torch.zeros(3), "std": torch.zeros(3)}
    n = Normalizer({"action": ACTION}, {"ACTION": "MEAN_STD"}, {"action": s})
    assert torch.equal(n.unnormalize({"action": torch.ones(1, 3)})["action"], torch.zeros(1, 3))


def test_identity_and_passthrough() -> None:
    n = Normalizer(
        {"observation.images.cam": IMAGE, "observation.state": STATE},
        {"VISUAL": NormMode.IDENTITY, "STATE": NormMode.MEAN_STD},
        {"observation.state": full_stats()},
    )
    img = torch.rand(2, 3, 4, 4)
    batch = {"observation.images.cam": img, "task": ["x"], "observation.state": torch.zeros(2, 3)}
    out = n.normalize(batch)
    assert out is not batch and out["observation.images.cam"] is img and out["task"] == ["x"]
    assert batch["observation.state"].eq(0).all()  # input untouched


def test_unmapped_types_are_identity() -> None:
    n = Normalizer(
        {"observation.environment_state": PolicyFeature(FeatureType.ENV, (2,))}, {"STATE": "MEAN_STD"}, {}
    )
    x = torch.ones(1, 2)
    assert n.normalize({"observation.environment_state": x})["observation.environment_state"] is x


def test_visual_per_channel_stats() -> None:
    n = Normalizer(
        {"observation.images.cam": IMAGE},
        {"VISUAL": "MEAN_STD"},
        {"observation.images.cam": {"mean": [0.5, 0.5, 0.0], "std": [0.5, 0.5, 1.0]}},
    )
    assert n.stats["observation.images.cam"]["mean"].shape == (3, 1, 1)  # saved so, as LeRobot
    y = n.normalize({"observation.images.cam": torch.ones(2, 3, 4, 4)})["observation.images.cam"]
    torch.testing.assert_close(y[:, 0], torch.ones(2, 4, 4))
    torch.testing.assert_close(y[:, 2], torch.ones(2, 4, 4))


def test_missing_feature_stats_names_everything() -> None:
    base_like = {
        "so100.buffer.action": {"mean": torch.zeros(6), "std": torch.ones(6)},
        "so100-red.buffer.action": {"mean": torch.zeros(6), "std": torch.ones(6)},
    }
    with pytest.raises(MissingStatsError) as e:
        Normalizer({"action": PolicyFeature(FeatureType.ACTION, (6,))}, {"ACTION": "MEAN_STD"}, base_like)
    msg = str(e.value)
    for part in (
        "'action'",
        "MEAN_STD",
        "['mean', 'std']",
        "'so100.buffer.action'",
        "'so100-red.buffer.action'",
        "pass the dataset stats",
    ):
        assert part in msg, part
    assert isinstance(e.value, ValueError)


def test_missing_stat_key() -> None:
    with pytest.raises(
        MissingStatsError, match=r"QUANTILES, which needs stats \['q01', 'q99'\].*has only \['max', 'min'\]"
    ):
        Normalizer(
            {"observation.state": STATE},
            {"STATE": "QUANTILES"},
            {"observation.state": {"min": [0, 0, 0], "max": [1, 1, 1]}},
        )


def test_non_finite_stats() -> None:
    s = {"mean": [0.0, float("nan"), 0.0], "std": [1.0, 1.0, 1.0]}
    with pytest.raises(StatsError, match=r"stats\['observation.state'\]\['mean'\] is not finite"):
        Normalizer({"observation.state": STATE}, {"STATE": "MEAN_STD"}, {"observation.state": s})


def test_stats_shape_vs_feature_shape() -> None:
    s = {"mean": [0.0] * 4, "std": [1.0] * 4}
    with pytest.raises(StatsError, match=r"shape \(4,\).*feature's shape \(3,\)"):
        Normalizer({"observation.state": STATE}, {"STATE": "MEAN_STD"}, {"observation.state": s})


def test_batch_shape_mismatch() -> None:
    n = Normalizer({"observation.state": STATE}, {"STATE": "MEAN_STD"}, {"observation.state": full_stats()})
    for bad in (torch.zeros(2, 4), torch.zeros(1)):
        with pytest.raises(
            StatsError, match=r"observation.state: batch tensor has shape .* stats have shape \(3,\)"
        ):
            n.normalize({"observation.state": bad})


def test_stats_follow_input_dtype_and_integers_become_float() -> None:
    n = Normalizer({"observation.state": STATE}, {"STATE": "MEAN_STD"}, {"observation.state": full_stats()})
    assert (
        n.normalize({"observation.state": torch.zeros(1, 3, dtype=torch.bfloat16)})["observation.state"].dtype
        == torch.bfloat16
    )
    assert (
        n.normalize({"observation.state": torch.zeros(1, 3, dtype=torch.int64)})["observation.state"].dtype
        == torch.float32
    )


def test_chunk_broadcast() -> None:
    n = Normalizer({"action": ACTION}, {"ACTION": "MEAN_STD"}, {"action": full_stats()})
    x = torch.randn(2, 50, 3)
    torch.testing.assert_close(n.unnormalize(n.normalize({"action": x}))["action"], x)


def test_flatten_unflatten() -> None:
    stats = {"observation.images.cam.left": {"mean": torch.ones(3, 1, 1)}, "action": {"q01": [1, 2]}}
    flat = flatten_stats(stats)
    assert set(flat) == {"observation.images.cam.left.mean", "action.q01"}
    assert all(t.dtype == torch.float32 for t in flat.values())
    back = unflatten_stats(flat)
    assert set(back) == {"observation.images.cam.left", "action"}
    assert torch.equal(back["action"]["q01"], torch.tensor([1.0, 2.0]))
    with pytest.raises(StatsError, match="nodot"):
        unflatten_stats({"nodot": torch.zeros(1)})


def test_stats_from_json(tmp_path: Path) -> None:
    d = {
        "observation.state": {
            "min": [0, 1],
            "max": [2, 3],
            "mean": [1, 2],
            "std": [0.5, 0.5],
            "count": [100],
        },
        "observation.images.cam": {"mean": [[[0.1]], [[0.2]], [[0.3]]], "std": [[[1]], [[1]], [[1]]]},
    }
    p = tmp_path / "stats.json"
    p.write_text(json.dumps(d))
    stats = load_stats(p)
    assert stats["observation.images.cam"]["mean"].shape == (3, 1, 1)
    assert stats["observation.state"]["count"].dtype == torch.float32
    assert load_stats(d)["observation.state"]["max"].tolist() == [2.0, 3.0]
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        load_stats(tmp_path / "missing.json")
    p.write_text(json.dumps({"observation.state": {"mean": ["a"]}}))
    with pytest.raises(StatsError, match=r"stats.json: stats\['observation.state'\]\['mean'\]"):
        load_stats(p)
