"""What stands between the policy's actions and the motors: a step limit and joint limits, applied to
every action before the driver sees it, counted, and logged when they act.

- Step limit (`--safety.max_step`): no joint moves its goal by more than this from the previous goal
  (the first one: from the measured position), in the robot's units (degrees for SO-100/101 with
  `use_degrees`). LeRobot's `--robot.max_relative_target` is the driver's own limit against the
  *measured* position; both may be on.
- Joint limits (`--safety.joint_limits`): every action inside the dataset's [min, max] per joint (the
  checkpoint's stats, sent by the server), widened by `--safety.limit_margin` of the range. A policy
  that has never seen a joint beyond its recorded range should not be trusted beyond it.

Limits first, then the step: a goal outside the range is pulled in, and the arm moves toward it no
faster than the step allows, so a robot that starts outside the range comes back slowly, never with a
jump.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from smolvla.config import ConfigError
from smolvla.errors import SmolVLAError

log = logging.getLogger("smolvla.robot")


@dataclass(frozen=True)
class SafetyConfig:
    # largest change of a joint's goal from one action to the next, in the robot's units (0: no limit)
    max_step: float = 10.0
    # keep every action within the dataset's min/max per joint (from the policy's stats), with a margin
    joint_limits: bool = True
    # how far beyond the dataset's range a joint may go, as a fraction of that range
    limit_margin: float = 0.05
    # seconds an observation may wait for its actions; past that the arm holds and the late answer is
    # dropped. Above the policy's usual time per chunk (full-size SmolVLA on a CPU: 1.5-4 s)
    server_timeout_s: float = 5.0
    # when the server is unreachable: hold and reconnect every second (true), or end the episode (false)
    reconnect: bool = True

    def __post_init__(self) -> None:
        for name in ("max_step", "limit_margin"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and math.isfinite(v)):
                raise ConfigError(f"safety.{name}: got {v!r}, expected a finite number >= 0")
        v = self.server_timeout_s
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
            raise ConfigError(f"safety.server_timeout_s: got {v!r}, expected seconds > 0")


class SafetyError(SmolVLAError, ValueError):
    """A safety setting that cannot be applied (e.g. joint limits without the dataset's stats)."""


class ActionGuard:
    """Applies the limits to each action (a vector in the robot's action order) and counts what it did.
    `reset(measured)` at the start of an episode: the step limit's first reference."""

    def __init__(
        self,
        names: Sequence[str],
        max_step: float = 0.0,
        low: np.ndarray | None = None,
        high: np.ndarray | None = None,
        log_every_s: float = 1.0,
    ) -> None:
        self.names = list(names)
        n = len(self.names)
        if (low is None) != (high is None):
            raise ValueError("low and high go together")
        if low is not None and (np.shape(low) != (n,) or np.shape(high) != (n,)):
            raise ValueError(f"limits of shape {np.shape(low)}, {np.shape(high)}; expected ({n},)")
        self.max_step = float(max_step)
        self.low = None if low is None else np.asarray(low, np.float64)
        self.high = None if high is None else np.asarray(high, np.float64)
        self.log_every_s = log_every_s
        self._goal = np.full(n, np.nan)
        self._last_log = -math.inf
        self._unlogged = 0
        self.actions = 0
        self.clamped = 0  # actions changed by any limit
        self.limit_clamps = dict.fromkeys(self.names, 0)  # per joint
        self.step_clamps = dict.fromkeys(self.names, 0)

    @classmethod
    def from_config(
        cls, cfg: SafetyConfig, names: Sequence[str], action_range: dict[str, list[float]] | None
    ) -> ActionGuard:
        low = high = None
        if cfg.joint_limits:
            if action_range is None:
                raise SafetyError(
                    "safety.joint_limits: the policy's checkpoint carries no action min/max (dataset stats), "
                    "so "
                    "there are no joint limits to enforce; train or export it with dataset stats, or pass "
                    "--safety.joint_limits=false to drive without them"
                )
            lo, hi = np.asarray(action_range["min"], np.float64), np.asarray(action_range["max"], np.float64)
            pad = cfg.limit_margin * (hi - lo)
            low, high = lo - pad, hi + pad
        return cls(names, cfg.max_step, low, high)

    def describe(self) -> str:
        parts = [f"step limit {self.max_step:g} per action" if self.max_step > 0 else "no step limit"]
        if self.low is not None:
            lim = ", ".join(
                f"{n} [{lo:.4g}, {hi:.4g}]" for n, lo, hi in zip(self.names, self.low, self.high, strict=True)
            )
            parts.append(f"joint limits {lim}")
        else:
            parts.append("no joint limits")
        return "; ".join(parts)

    def reset(self, measured: np.ndarray | None = None) -> None:
        """The first step's reference: the measured joint positions (NaN: none for that joint)."""
        self._goal = (
            np.full(len(self.names), np.nan) if measured is None else np.asarray(measured, np.float64).copy()
        )

    @property
    def goal(self) -> np.ndarray:
        """The last goal let through (NaN before any)."""
        return self._goal.copy()

    def __call__(self, action: np.ndarray) -> np.ndarray:
        a = np.asarray(action, np.float64).reshape(-1)
        if a.shape != (len(self.names),):
            raise ValueError(f"action of shape {list(a.shape)}, expected [{len(self.names)}]")
        out = a.copy()
        what: list[str] = []
        if self.low is not None:
            out = np.clip(out, self.low, self.high)
            for i in np.flatnonzero(out != a):
                self.limit_clamps[self.names[i]] += 1
                what.append(f"{self.names[i]} {a[i]:.4g} -> {out[i]:.4g} (joint limit)")
        if self.max_step > 0:
            ref = self._goal
            known = np.isfinite(ref)
            stepped = np.where(known, np.clip(out, ref - self.max_step, ref + self.max_step), out)
            for i in np.flatnonzero(stepped != out):
                self.step_clamps[self.names[i]] += 1
                what.append(f"{self.names[i]} {out[i]:.4g} -> {stepped[i]:.4g} (step {self.max_step:g})")
            out = stepped
        self.actions += 1
        if what:
            self.clamped += 1
            self._unlogged += 1
            now = time.monotonic()
            if now - self._last_log >= self.log_every_s:  # at most once a second: 30 lines/s help no one
                more = (
                    f" ({self._unlogged} actions clamped since the last message)"
                    if self._unlogged > 1
                    else ""
                )
                log.warning("safety: clamped %s%s", ", ".join(what), more)
                self._last_log, self._unlogged = now, 0
        self._goal = out.copy()
        return out.astype(np.float32)

    def report(self) -> dict[str, object]:
        return {
            "actions": self.actions,
            "actions_clamped": self.clamped,
            "joint_limit_clamps": {k: v for k, v in self.limit_clamps.items() if v},
            "step_clamps": {k: v for k, v in self.step_clamps.items() if v},
        }
