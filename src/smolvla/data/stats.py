"""Feature statistics as LeRobot stores them: per episode, and aggregated over a dataset.

Each feature gets `min, max, mean, std, count, q01, q10, q50, q90, q99`. Vectors (N, D) give per-dimension
arrays of shape (D,); camera frames give per-channel arrays of shape (3, 1, 1) in [0, 1]; `count` has
shape (1,). In JSON (`meta/stats.json`) every array is a nested list.

How they are computed:
- Vectors: exact, in float64. Quantiles interpolate linearly between order statistics (numpy's default).
- Camera frames: every frame of the episode, downsampled as LeRobot does (a stride of size // 150 when
  the larger side is 300 px or more), through a 256-bin histogram per channel. Pixels are uint8, so the
  histogram is exact: the stats equal those of the pixel values themselves, divided by 255. `count` is
  the number of frames (LeRobot counts the ~100 frames it samples; counting all frames gives long
  episodes their true weight in the aggregate).
- Aggregation over episodes (or datasets): `count` adds up, `min`/`max` are global, `mean` is the
  count-weighted mean and `std` the pooled standard deviation (within- plus between-episode variance),
  so those four are exact. The quantiles of the union cannot be recovered exactly from per-episode
  quantiles; we treat each episode's distribution as the piecewise-linear CDF through its knots
  (min, 0), (q01, .01), (q10, .1), (q50, .5), (q90, .9), (q99, .99), (max, 1), form the count-weighted
  mixture of those CDFs, and invert it exactly. This reproduces a single episode's quantiles, gives the
  right answer when episodes cover disjoint ranges, and stays within [min, max]. (LeRobot 0.6.1 averages
  the per-episode quantiles, which is wrong for episodes that do not overlap.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from smolvla.data.errors import DatasetError

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
STAT_NAMES = ("min", "max", "mean", "std", "count", *QUANTILES)
_KNOT_LEVELS = np.array([0.0, *QUANTILES.values(), 1.0])

Stats = dict[str, np.ndarray]


def vector_stats(values: np.ndarray) -> Stats:
    """Stats of (N,) or (N, D) values, per dimension. N must be at least 1."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or len(x) == 0:
        raise DatasetError(f"vector_stats: got shape {np.shape(values)}, expected (N>0,) or (N>0, D)")
    out: Stats = {
        "min": x.min(0),
        "max": x.max(0),
        "mean": x.mean(0),
        "std": x.std(0),
        "count": np.array([len(x)], dtype=np.int64),
    }
    qs = np.quantile(x, list(QUANTILES.values()), axis=0)
    for i, name in enumerate(QUANTILES):
        out[name] = qs[i]
    return out


def downsample_stride(height: int, width: int) -> int:
    """LeRobot's stride for image stats: frames of 300 px or more are cut down to about 150 px."""
    side = max(height, width)
    return 1 if side < 300 else side // 150


class ImageStats:
    """Accumulates exact per-channel histograms of uint8 (H, W, C) frames, one frame at a time."""

    def __init__(self, channels: int = 3):
        self.hist = np.zeros((channels, 256), dtype=np.int64)
        self.frames = 0

    def add(self, frame: np.ndarray) -> None:
        s = downsample_stride(frame.shape[0], frame.shape[1])
        px = frame[::s, ::s].reshape(-1, frame.shape[-1])
        for c in range(self.hist.shape[0]):
            self.hist[c] += np.bincount(px[:, c], minlength=256)
        self.frames += 1

    def result(self) -> Stats:
        return histogram_stats(self.hist, self.frames)


def _hist_quantile(cum: np.ndarray, total: int, q: float) -> float:
    # The value at fractional rank h = q (n - 1), interpolated like np.quantile's default.
    h = q * (total - 1)
    lo, hi = int(np.floor(h)), int(np.ceil(h))
    v_lo = int(np.searchsorted(cum, lo, side="right"))
    v_hi = int(np.searchsorted(cum, hi, side="right"))
    return v_lo + (h - lo) * (v_hi - v_lo)


def histogram_stats(hist: np.ndarray, frames: int) -> Stats:
    """Stats (each of shape (C, 1, 1), in [0, 1]) of uint8 pixels given as (C, 256) counts."""
    hist = np.asarray(hist, dtype=np.int64)
    if frames < 1 or hist.sum() == 0:
        raise DatasetError("histogram_stats: no pixels were accumulated")
    values = np.arange(256, dtype=np.float64)
    out: dict[str, list[float]] = {k: [] for k in STAT_NAMES if k != "count"}
    for h in hist:
        n = int(h.sum())
        nz = np.flatnonzero(h)
        mean = float((h * values).sum() / n)
        out["min"].append(float(nz[0]))
        out["max"].append(float(nz[-1]))
        out["mean"].append(mean)
        out["std"].append(float(np.sqrt(max(0.0, (h * (values - mean) ** 2).sum() / n))))
        cum = np.cumsum(h)
        for name, q in QUANTILES.items():
            out[name].append(_hist_quantile(cum, n, q))
    stats: Stats = {k: np.array(v, dtype=np.float64).reshape(-1, 1, 1) / 255.0 for k, v in out.items()}
    stats["count"] = np.array([frames], dtype=np.int64)
    return stats


def _mixture_quantiles(knots: np.ndarray, weights: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Quantiles of sum_j w_j F_j, F_j piecewise-linear through (knots[j], _KNOT_LEVELS). knots: (E, 7)."""
    knots = np.maximum.accumulate(knots, axis=1)  # guards against rounding that unsorts the knots
    w = weights / weights.sum()
    a, b = knots[:, :-1].ravel(), knots[:, 1:].ravel()
    mass = (w[:, None] * np.diff(_KNOT_LEVELS)[None, :]).ravel()
    ramp = b > a
    t, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    ia, ib = inv[: len(a)], inv[len(a) :]
    slope = np.where(ramp, mass / np.where(ramp, b - a, 1.0), 0.0)
    dslope = np.bincount(ia, slope, len(t)) - np.bincount(ib, slope, len(t))
    jump = np.bincount(ia, np.where(ramp, 0.0, mass), len(t))  # zero-width pieces are steps of the CDF
    between = np.cumsum(dslope)[:-1] * np.diff(t)  # mass strictly between consecutive breakpoints
    left = np.concatenate([[0.0], np.cumsum(between)]) + np.concatenate([[0.0], np.cumsum(jump)[:-1]])
    right = left + jump  # the CDF at each breakpoint, and its limit from the left
    out = np.empty(len(levels))
    for k, q in enumerate(levels):
        i = min(int(np.searchsorted(right, q - 1e-12, side="left")), len(t) - 1)
        if i == 0 or left[i] < q - 1e-12 or left[i] <= right[i - 1]:
            out[k] = t[i]  # the first breakpoint, or a step of the CDF that crosses q
        else:
            frac = min(1.0, (q - right[i - 1]) / (left[i] - right[i - 1]))
            out[k] = t[i - 1] + frac * (t[i] - t[i - 1])
    return out


def _aggregate(counts: np.ndarray, arrays: dict[str, np.ndarray], shape: tuple[int, ...]) -> Stats:
    """Aggregation of stacked stats: counts (E,), arrays[stat] (E, P) with P = prod(shape)."""
    if (counts <= 0).any():
        raise DatasetError(f"aggregate stats: counts must be positive, got {counts.tolist()}")
    w = counts / counts.sum()
    means, stds = arrays["mean"], arrays["std"]
    mean = (w[:, None] * means).sum(0)
    var = (w[:, None] * (stds**2 + (means - mean) ** 2)).sum(0)
    out: Stats = {
        "min": arrays["min"].min(0).reshape(shape),
        "max": arrays["max"].max(0).reshape(shape),
        "mean": mean.reshape(shape),
        "std": np.sqrt(np.maximum(var, 0.0)).reshape(shape),
        "count": np.array([int(counts.sum())], dtype=np.int64),
    }
    if all(q in arrays for q in QUANTILES):
        if len(counts) == 1:
            for q in QUANTILES:
                out[q] = arrays[q][0].reshape(shape)
        else:
            knots = np.stack([arrays["min"], *(arrays[q] for q in QUANTILES), arrays["max"]], axis=-1)
            levels = list(QUANTILES.values())
            per_dim = np.stack([_mixture_quantiles(knots[:, p], w, levels) for p in range(knots.shape[1])])
            for i, q in enumerate(QUANTILES):
                out[q] = per_dim[:, i].reshape(shape)
    return out


def _check_entry(s: Stats, shape: tuple[int, ...] | None) -> tuple[int, ...]:
    for k in ("min", "max", "mean", "std", "count"):
        if k not in s:
            raise DatasetError(f"aggregate stats: a stats entry lacks {k!r} (it has {sorted(s)})")
    got = np.shape(s["mean"])
    if shape is not None and got != shape:
        raise DatasetError(f"aggregate stats: shapes differ ({got} vs {shape})")
    return got


def aggregate_feature_stats(stats_list: Sequence[Stats]) -> Stats:
    """One feature's stats over several episodes (or datasets): see the module docstring."""
    if not stats_list:
        raise DatasetError("aggregate_feature_stats: no stats to aggregate")
    shape = _check_entry(stats_list[0], None)
    for s in stats_list:
        _check_entry(s, shape)
    counts = np.array([float(np.asarray(s["count"]).reshape(-1)[0]) for s in stats_list])
    keys = [k for k in STAT_NAMES if k != "count" and all(k in s for s in stats_list)]
    arrays = {k: np.stack([np.asarray(s[k], dtype=np.float64).reshape(-1) for s in stats_list]) for k in keys}
    return _aggregate(counts, arrays, shape)


class StatsAccumulator:
    """Episode stats kept stacked per feature, so re-aggregating after each episode costs no Python loop
    over the episodes (the writer refreshes `meta/stats.json` at every saved episode)."""

    def __init__(self) -> None:
        self._n: dict[str, int] = {}
        self._shape: dict[str, tuple[int, ...]] = {}
        self._counts: dict[str, np.ndarray] = {}
        self._arrays: dict[str, dict[str, np.ndarray]] = {}

    def add(self, stats: dict[str, Stats]) -> None:
        for feat, s in stats.items():
            shape = _check_entry(s, self._shape.get(feat))
            n = self._n.get(feat, 0)
            if n == 0:
                self._shape[feat] = shape
                self._counts[feat] = np.zeros(16)
                self._arrays[feat] = {
                    k: np.zeros((16, int(np.prod(shape)))) for k in STAT_NAMES if k != "count" and k in s
                }
            arrays = self._arrays[feat]
            if n == len(self._counts[feat]):  # grow by doubling: appends stay amortized O(1)
                self._counts[feat] = np.concatenate([self._counts[feat], np.zeros(n)])
                for k in arrays:
                    arrays[k] = np.concatenate([arrays[k], np.zeros_like(arrays[k])])
            self._counts[feat][n] = float(np.asarray(s["count"]).reshape(-1)[0])
            for k in list(arrays):
                if k in s:
                    arrays[k][n] = np.asarray(s[k], dtype=np.float64).reshape(-1)
                else:  # an entry without quantiles: the aggregate has none either
                    del arrays[k]
            self._n[feat] = n + 1

    def result(self) -> dict[str, Stats]:
        return {
            feat: _aggregate(
                self._counts[feat][:n], {k: v[:n] for k, v in self._arrays[feat].items()}, self._shape[feat]
            )
            for feat, n in self._n.items()
        }


def aggregate_stats(stats_list: Sequence[dict[str, Stats]]) -> dict[str, Stats]:
    """Per-feature aggregation over several stats dicts; a feature missing from some uses the others."""
    keys = list(dict.fromkeys(k for s in stats_list for k in s))
    return {k: aggregate_feature_stats([s[k] for s in stats_list if k in s]) for k in keys}


def stats_to_json(stats: dict[str, Stats]) -> dict[str, dict[str, Any]]:
    """Nested lists (floats; `count` as ints), as `meta/stats.json` holds them."""
    out: dict[str, dict[str, Any]] = {}
    for feat, s in stats.items():
        out[feat] = {}
        for k, v in s.items():
            arr = np.asarray(v)
            out[feat][k] = arr.astype(np.int64).tolist() if k == "count" else arr.astype(np.float64).tolist()
    return out


def stats_from_json(d: dict[str, dict[str, Any]], where: str = "stats") -> dict[str, Stats]:
    """The inverse of `stats_to_json` (arrays at least 1-D, as LeRobot loads them)."""
    if not isinstance(d, dict):
        raise DatasetError(f"{where}: got {type(d).__name__}, expected a mapping of feature name to stats")
    out: dict[str, Stats] = {}
    for feat, s in d.items():
        if not isinstance(s, dict):
            raise DatasetError(
                f"{where}.{feat}: got {type(s).__name__}, expected a mapping of stat name to list"
            )
        out[feat] = {}
        for k, v in s.items():
            try:
                out[feat][k] = np.atleast_1d(np.asarray(v, dtype=np.int64 if k == "count" else np.float64))
            except (TypeError, ValueError) as e:
                raise DatasetError(f"{where}.{feat}.{k}: not a numeric array ({e})") from e
    return out


def stats_from_columns(row: dict[str, Any], prefix: str = "stats/") -> dict[str, Stats]:
    """Per-feature stats of an episodes-metadata row, whose columns are `stats/<feature>/<stat>`."""
    out: dict[str, Stats] = {}
    for col, v in row.items():
        if col.startswith(prefix) and v is not None:
            feat, stat = col[len(prefix) :].rsplit("/", 1)
            out.setdefault(feat, {})[stat] = np.asarray(v, dtype=np.int64 if stat == "count" else np.float64)
    return {k: s for k, s in out.items() if "count" in s and "mean" in s}
