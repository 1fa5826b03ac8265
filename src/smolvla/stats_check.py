"""The one validation of normalization statistics, shared by every place that loads them.

Stats reach SmolVLA from a checkpoint's processor files, a dataset's `meta/stats.json` (or its episodes'
stats) and the caller. Wherever they come from, a value that cannot be a statistic would not fail later: a
negative std flips the sign of every normalized value, `min > max` mirrors the range, a NaN spreads to every
action. So each loader calls `validate_stats` once, before anything uses the values.

numpy only: the data layer (no torch) and the processors (torch) both import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from smolvla.errors import SmolVLAError

# Pairs that must be ordered (low <= high) when both are present: the ranges normalization divides by
# (MIN_MAX, QUANTILES, QUANTILE10; reversed, they mirror every value) and the mean inside [min, max].
ORDERED_PAIRS = (("min", "max"), ("q01", "q99"), ("q10", "q90"), ("min", "mean"), ("mean", "max"))
# Float32 storage (safetensors) and pooled aggregation round; an order violation smaller than this,
# relative to the values' magnitude, is rounding and not a contradiction.
_REL_TOL = 1e-5


def _fmt(a: np.ndarray, limit: int = 8) -> str:
    flat = a.reshape(-1).tolist()
    more = f", ... ({len(flat)} values)" if len(flat) > limit else ""
    return "[" + ", ".join(f"{v:.6g}" for v in flat[:limit]) + more + "]"


def _fits(stat_shape: tuple[int, ...], feature_shape: tuple[int, ...]) -> bool:
    # A stat fits when it broadcasts to exactly the feature's shape: (D,) for (D,), (C, 1, 1) for (C, H, W).
    try:
        return np.broadcast_shapes(stat_shape, feature_shape) == tuple(feature_shape)
    except ValueError:
        return False


def validate_stats(
    stats: Mapping[str, Mapping[str, Any]],
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    *,
    where: str = "stats",
    error: type[SmolVLAError] = SmolVLAError,
) -> None:
    """Raises `error` at the first statistic that cannot be right, naming feature, stat and value.

    - every value is a finite number;
    - `std` >= 0 (0 is allowed: a dimension that never moves; normalization divides by std + eps there,
      as LeRobot does), `count` >= 1;
    - `min <= max`, `q01 <= q99`, `q10 <= q90` and `min <= mean <= max`, for those present;
    - the stats of one feature agree in shape (`count` aside), and fit `shapes[feature]` when given.
    """
    if not isinstance(stats, Mapping):
        raise error(f"{where}: got {type(stats).__name__}, expected a mapping of feature name to stats")
    for feat, sub in stats.items():
        if not isinstance(sub, Mapping):
            raise error(
                f"{where}[{feat!r}]: got {type(sub).__name__}, expected a mapping of stat name to values"
            )
        arrays: dict[str, np.ndarray] = {}
        for name, value in sub.items():
            at = f"{where}[{feat!r}][{name!r}]"
            try:
                a = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=np.float64)
            except (TypeError, ValueError):
                raise error(f"{at}: got {value!r:.80}, expected an array of numbers") from None
            if not np.isfinite(a).all():
                raise error(f"{at} is not finite: {_fmt(a)}, expected finite numbers")
            arrays[name] = a
        if "std" in arrays and (arrays["std"] < 0).any():
            raise error(
                f"{where}[{feat!r}]['std'] is negative: {_fmt(arrays['std'])}, expected std >= 0 "
                "(a negative std would flip the sign of the normalized values)"
            )
        if "count" in arrays and (arrays["count"] < 1).any():
            raise error(f"{where}[{feat!r}]['count'] is {_fmt(arrays['count'])}, expected a count >= 1")
        shaped = {k: a for k, a in arrays.items() if k != "count"}
        ref = next(iter(shaped), None)
        for name, a in shaped.items():
            if a.shape != shaped[ref].shape:
                raise error(
                    f"{where}[{feat!r}]['{name}'] has shape {a.shape}, but ['{ref}'] has shape "
                    f"{shaped[ref].shape}: the stats of one feature must have one shape"
                )
        fits = shapes is None or feat not in shapes or ref is None
        if not fits and not _fits(shaped[ref].shape, tuple(shapes[feat])):
            raise error(
                f"{where}[{feat!r}]['{ref}'] has shape {shaped[ref].shape}, which does not fit the "
                f"feature's shape {tuple(shapes[feat])}"
            )
        for lo, hi in ((lo, hi) for lo, hi in ORDERED_PAIRS if lo in arrays and hi in arrays):
            a, b = arrays[lo], arrays[hi]
            tol = _REL_TOL * np.maximum(1.0, np.maximum(np.abs(a), np.abs(b)))
            bad = a - b > tol
            if bad.any():
                i = int(np.flatnonzero(bad.reshape(-1))[0])
                raise error(
                    f"{where}[{feat!r}]: {lo} > {hi} at index {i} ({a.reshape(-1)[i]:.6g} > "
                    f"{b.reshape(-1)[i]:.6g}); {lo} {_fmt(a)}, {hi} {_fmt(b)}, expected {lo} <= {hi}"
                )


def stats_range(stats: dict[str, Any] | None, n: int) -> dict[str, list[float]] | None:
    """{"min", "max"} per dimension from a feature's normalization stats (the dataset's), or None when
    the stats carry no finite min/max of width `n`: what a robot client bounds the actions with."""
    if not isinstance(stats, Mapping) or "min" not in stats or "max" not in stats:
        return None
    try:
        lo = np.asarray(stats["min"], np.float64).reshape(-1)
        hi = np.asarray(stats["max"], np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    if lo.shape != (n,) or hi.shape != (n,) or not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        return None
    if np.any(lo > hi):
        return None
    return {"min": lo.tolist(), "max": hi.tolist()}
