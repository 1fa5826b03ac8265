"""Stats against numpy: per episode (vectors, camera frames), aggregated (exact moments, sound quantiles)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smolvla.data.stats import (
    QUANTILES,
    ImageStats,
    StatsAccumulator,
    aggregate_feature_stats,
    aggregate_stats,
    downsample_stride,
    stats_from_json,
    stats_to_json,
    vector_stats,
)


def test_vector_stats_match_numpy() -> None:
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    s = vector_stats(x)
    np.testing.assert_allclose(s["mean"], x.astype(np.float64).mean(0))
    np.testing.assert_allclose(s["std"], x.astype(np.float64).std(0))
    np.testing.assert_array_equal(s["min"], x.min(0))
    np.testing.assert_array_equal(s["max"], x.max(0))
    for k, q in QUANTILES.items():
        np.testing.assert_allclose(s[k], np.quantile(x.astype(np.float64), q, axis=0))
    assert s["count"].tolist() == [50]
    one = vector_stats(np.array([[1.0, 2.0]]))  # a single frame: every quantile is the value
    assert one["q01"].tolist() == [1.0, 2.0] and one["std"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("size", [(20, 24), (320, 300)])
def test_image_stats_match_numpy_on_the_downsampled_pixels(size: tuple[int, int]) -> None:
    frames = np.random.default_rng(1).integers(0, 256, (4, *size, 3), dtype=np.uint8)
    acc = ImageStats()
    for f in frames:
        acc.add(f)
    s = acc.result()
    k = downsample_stride(*size)
    assert k == (1 if max(size) < 300 else max(size) // 150)
    px = frames[:, ::k, ::k].reshape(-1, 3).astype(np.float64) / 255
    for name in ("min", "max", "mean", "std"):
        np.testing.assert_allclose(s[name].ravel(), getattr(px, name)(0), atol=1e-12)
        assert s[name].shape == (3, 1, 1)
    for name, q in QUANTILES.items():
        np.testing.assert_allclose(s[name].ravel(), np.quantile(px, q, axis=0), atol=1e-12)
    assert s["count"].tolist() == [4]


def test_aggregation_is_exact_for_moments_and_sound_for_quantiles() -> None:
    rng = np.random.default_rng(2)
    eps = [rng.normal(loc=rng.normal(), size=(int(rng.integers(1, 40)), 2)) for _ in range(30)]
    agg = aggregate_feature_stats([vector_stats(e) for e in eps])
    x = np.concatenate(eps)
    np.testing.assert_allclose(agg["mean"], x.mean(0))
    np.testing.assert_allclose(agg["std"], x.std(0))
    np.testing.assert_array_equal(agg["min"], x.min(0))
    np.testing.assert_array_equal(agg["max"], x.max(0))
    assert agg["count"].tolist() == [len(x)]
    for k, q in QUANTILES.items():  # close to the exact quantile of the union
        np.testing.assert_allclose(agg[k], np.quantile(x, q, axis=0), atol=0.25)
    # One episode: its own stats back. Equal episodes: the same quantiles.
    s = vector_stats(eps[0])
    for k in QUANTILES:
        np.testing.assert_allclose(aggregate_feature_stats([s])[k], s[k])
        np.testing.assert_allclose(aggregate_feature_stats([s, s, s])[k], s[k])


def test_aggregated_quantiles_of_disjoint_episodes() -> None:
    # Two episodes on [0, 1] and [10, 11]: q10 lies in the first, q90 in the second. Averaging
    # quantiles (LeRobot 0.6.1) would put q10 near 1.9 and q90 near 9.2, where no data is.
    a = np.linspace(0, 1, 101)[:, None]
    agg = aggregate_feature_stats([vector_stats(a), vector_stats(a + 10)])
    assert 0 <= agg["q10"][0] <= 1 and 10 <= agg["q90"][0] <= 11
    assert agg["q10"][0] == pytest.approx(0.2, abs=0.02) and agg["q90"][0] == pytest.approx(10.8, abs=0.02)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=20),
        min_size=1,
        max_size=8,
    )
)
def test_aggregated_quantiles_are_ordered_and_bounded(episodes: list[list[float]]) -> None:
    agg = aggregate_feature_stats([vector_stats(np.array(e)) for e in episodes])
    qs = [agg["min"][0], *(agg[k][0] for k in QUANTILES), agg["max"][0]]
    assert all(a <= b + 1e-9 for a, b in itertools.pairwise(qs))


def test_accumulator_equals_aggregate_and_json_round_trip() -> None:
    rng = np.random.default_rng(3)
    eps = []
    for _ in range(5):
        img = ImageStats()
        img.add(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        eps.append({"action": vector_stats(rng.normal(size=(6, 2))), "cam": img.result()})
    acc = StatsAccumulator()
    for e in eps:
        acc.add(e)
    a, b = acc.result(), aggregate_stats(eps)
    for f in a:
        for k in a[f]:
            np.testing.assert_allclose(a[f][k], b[f][k])
    back = stats_from_json(json.loads(json.dumps(stats_to_json(a))))
    assert back["cam"]["mean"].shape == (3, 1, 1) and back["cam"]["count"].dtype == np.int64
    for f in a:
        for k in a[f]:
            np.testing.assert_allclose(back[f][k], a[f][k])
