"""Feature normalization with dataset statistics, with LeRobot's exact math (spec §4.2).

One deliberate difference: LeRobot silently passes a feature through when its stats are missing (this is
why zero-shot `lerobot/smolvla_base` emits z-scores to the robot, spec §8.5). Here a feature whose mode needs
stats that are absent (or not finite, or of the wrong shape) is an error at construction.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smolvla.config import FeatureType, NormMode, PolicyFeature, SmolVLAConfig
from smolvla.errors import SmolVLAError
from smolvla.io import read_json_object
from smolvla.stats_check import validate_stats

# The stats each mode reads: (low/centre, high/spread).
NEEDED_STATS: dict[NormMode, tuple[str, str]] = {
    NormMode.MEAN_STD: ("mean", "std"),
    NormMode.MIN_MAX: ("min", "max"),
    NormMode.QUANTILES: ("q01", "q99"),
    NormMode.QUANTILE10: ("q10", "q90"),
}

Stats = dict[str, dict[str, torch.Tensor]]


class MissingStatsError(SmolVLAError, ValueError):
    """A feature's normalization mode needs statistics that were not given."""


class StatsError(SmolVLAError, ValueError):
    """Statistics that exist but cannot be used (not finite, wrong shape, not numbers)."""


def _to_tensor(v: Any, where: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.detach().to(device="cpu", dtype=torch.float32).contiguous()
    try:
        return torch.as_tensor(np.asarray(v, dtype=np.float64), dtype=torch.float32).contiguous()
    except (TypeError, ValueError) as e:
        raise StatsError(f"{where}: got {v!r:.80}, expected numbers ({e})") from None


def to_stats(stats: dict[str, dict[str, Any]] | None) -> Stats:
    """Nested stats of lists / arrays / tensors as float32 CPU tensors."""
    out: Stats = {}
    for feat, sub in (stats or {}).items():
        if not isinstance(sub, dict):
            raise StatsError(
                f"stats[{feat!r}]: got {type(sub).__name__}, expected a mapping of stat name to values"
            )
        out[feat] = {k: _to_tensor(v, f"stats[{feat!r}][{k!r}]") for k, v in sub.items()}
    return out


def flatten_stats(stats: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
    """`{"<feature>.<stat>": float32 CPU tensor}`, the layout of LeRobot's normalizer safetensors."""
    return {f"{feat}.{k}": t for feat, sub in to_stats(stats).items() for k, t in sub.items()}


def unflatten_stats(flat: dict[str, torch.Tensor]) -> Stats:
    """Inverse of `flatten_stats`. Splits on the LAST dot: feature names contain dots, stat names do not."""
    out: Stats = {}
    for key, t in flat.items():
        feat, sep, stat = key.rpartition(".")
        if not sep or not feat or not stat:
            raise StatsError(f"stats key {key!r}: expected '<feature>.<stat>'")
        out.setdefault(feat, {})[stat] = _to_tensor(t, f"stats key {key!r}")
    return out


def load_stats(path_or_dict: str | Path | dict[str, Any]) -> Stats:
    """Normalization stats from a LeRobot dataset's `meta/stats.json` (or its parsed dict), as float32
    tensors. (`smolvla.data.stats_from_json` is the dataset side: numpy arrays, counts kept.)"""
    if isinstance(path_or_dict, dict):
        return to_stats(path_or_dict)
    path = Path(path_or_dict)
    d = read_json_object(path, StatsError)
    try:
        return to_stats(d)
    except StatsError as e:
        raise StatsError(f"{path}: {e}") from e


def _norm_map(norm_map: dict[Any, Any]) -> dict[FeatureType, NormMode]:
    if not isinstance(norm_map, dict):
        raise StatsError(f"norm_map: got {norm_map!r:.80}, expected a mapping of feature type to mode")
    out = {}
    for k, v in norm_map.items():
        try:
            out[FeatureType(k.value if isinstance(k, FeatureType) else k)] = NormMode(v)
        except ValueError:
            raise StatsError(
                f"norm_map: {k!r}: {v!r} is not a feature type -> mode pair; types are "
                f"{[t.value for t in FeatureType]}, modes {[m.value for m in NormMode]}"
            ) from None
    return out


def _feature_list(stats: Stats, limit: int = 12) -> str:
    names = sorted(stats)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return (", ".join(repr(n) for n in names[:limit]) + more) if names else "none"


class Normalizer:
    """Normalizes (and unnormalizes) the features of a flat batch dict; other keys pass through."""

    def __init__(
        self,
        features: dict[str, PolicyFeature],
        norm_map: dict[Any, Any],
        stats: dict[str, dict[str, Any]] | None,
        eps: float = 1e-8,
    ) -> None:
        self.features = dict(features)
        self.norm_map = _norm_map(norm_map)
        self.stats = to_stats(stats)  # the whole dict, also features we do not normalize: it is all saved
        for name, feat in self.features.items():
            # Per-channel (C,) image stats become (C, 1, 1) to broadcast over (C, H, W); LeRobot saves so.
            if feat.type == FeatureType.VISUAL and name in self.stats:
                self.stats[name] = {
                    k: t.reshape(-1, 1, 1) if t.ndim == 1 else t for k, t in self.stats[name].items()
                }
        # LeRobot's eps only keeps a division finite: it must be a small positive number. Anything else
        # (0, negative, NaN) would turn a constant dimension into inf/NaN far from where it was set.
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
            raise StatsError(f"eps: got {eps!r}, expected a finite number > 0 (LeRobot's default is 1e-8)")
        validate_stats(
            self.stats, {k: f.shape for k, f in self.features.items()}, where="stats", error=StatsError
        )
        self.eps = float(eps)
        self.modes: dict[str, NormMode] = {}
        self._params: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # feature -> (offset, scale) on CPU
        self._cache: dict[tuple[str, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        for name, feat in self.features.items():
            mode = self.norm_map.get(feat.type, NormMode.IDENTITY)
            if mode == NormMode.IDENTITY:
                continue
            self.modes[name] = mode
            self._params[name] = self._check(name, feat, mode)

    def _check(self, name: str, feat: PolicyFeature, mode: NormMode) -> tuple[torch.Tensor, torch.Tensor]:
        needed = NEEDED_STATS[mode]
        have = self.stats.get(name)
        if have is None or any(k not in have for k in needed):
            what = (
                f"stats[{name!r}] has only {sorted(have)}"
                if have is not None
                else f"stats have no entry {name!r} (stats have features: {_feature_list(self.stats)})"
            )
            raise MissingStatsError(
                f"feature {name!r} ({feat.type.value}) is normalized with {mode.value}, which needs stats "
                f"{list(needed)}, but {what}. Did you fine-tune / pass the dataset stats (meta/stats.json) "
                "or a rename_map matching the checkpoint's feature names?"
            )
        return have[needed[0]], have[needed[1]]  # values, shapes and order checked by validate_stats

    def _get(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (name, x.device, x.dtype)
        if key not in self._cache:  # stats follow the input's device and dtype, as LeRobot
            lo, hi = self._params[name]
            lo, hi = lo.to(device=x.device, dtype=x.dtype), hi.to(device=x.device, dtype=x.dtype)
            if self.modes[name] == NormMode.MEAN_STD:
                self._cache[key] = (lo, hi)
            else:
                # Where the range is empty, eps is the denominator (both directions, as LeRobot).
                denom = hi - lo
                denom = torch.where(denom == 0, torch.tensor(self.eps, device=x.device, dtype=x.dtype), denom)
                self._cache[key] = (lo, denom)
        return self._cache[key]

    def _apply(self, name: str, x: Any, inverse: bool) -> torch.Tensor:
        x = torch.as_tensor(x)
        if not x.is_floating_point():
            x = x.to(torch.float32)
        lo, scale = self._get(name, x)
        try:
            ok = torch.broadcast_shapes(lo.shape, x.shape) == x.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise StatsError(
                f"{name}: batch tensor has shape {tuple(x.shape)}, but its stats have shape "
                f"{tuple(lo.shape)} "
                f"(feature shape {self.features[name].shape}); the last dims must match"
            )
        mode = self.modes[name]
        if mode == NormMode.MEAN_STD:
            mean, std = lo, scale
            return x * std + mean if inverse else (x - mean) / (std + self.eps)
        if mode == NormMode.MIN_MAX:
            return (x + 1) / 2 * scale + lo if inverse else 2 * (x - lo) / scale - 1
        # QUANTILES / QUANTILE10: LeRobot writes these with a different operation order than MIN_MAX; kept
        # so results agree to the bit.
        return (x + 1.0) * scale / 2.0 + lo if inverse else 2.0 * (x - lo) / scale - 1.0

    def _map(self, batch: dict[str, Any], inverse: bool) -> dict[str, Any]:
        out = dict(batch)
        for name in self.modes:
            if name in out:
                out[name] = self._apply(name, out[name], inverse)
        return out

    def normalize(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self._map(batch, inverse=False)

    def unnormalize(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self._map(batch, inverse=True)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return flatten_stats(self.stats)


def unit_stats(cfg: SmolVLAConfig) -> dict[str, dict[str, list[float]]]:
    """Zero-mean unit-variance stats for a demo of an untrained policy (no dataset to compute them)."""
    out = {}
    for key, feat in {**cfg.input_features, **cfg.output_features}.items():
        if feat.type in (FeatureType.STATE, FeatureType.ACTION):
            n = feat.shape[0]
            out[key] = {
                "mean": [0.0] * n,
                "std": [1.0] * n,
                "min": [-1.0] * n,
                "max": [1.0] * n,
                "q01": [-1.0] * n,
                "q99": [1.0] * n,
                "q10": [-1.0] * n,
                "q90": [1.0] * n,
            }
    return out
