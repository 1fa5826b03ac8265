"""The flow-matching sampler: Euler steps of a velocity from t=1 (noise) to t=0 (actions).

It needs only `x + dt * v`, so the same loop drives the PyTorch model (`VLAFlowMatching.sample_actions`)
and the exported graphs (`smolvla.runtime`, numpy arrays, no torch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from smolvla.config import ConfigError

X = TypeVar("X")


def euler(x: X, num_steps: int, velocity: Callable[[X, float], X]) -> X:
    """Integrates dx/dt = velocity(x, t) from t=1 down to t=0 in `num_steps` equal steps."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigError(f"num_steps: got {num_steps!r}, expected a positive integer")
    dt = -1.0 / num_steps
    for step in range(num_steps):
        x = x + dt * velocity(x, 1.0 + step * dt)
    return x
