"""Real-time chunking (RTC): inference-time guidance that makes a new action chunk continue the
previous one (Black, Galliker, Levine, "Real-Time Execution of Action Chunking Flow Policies", 2025).

While chunk k+1 is computed, the robot keeps executing chunk k. When it switches, an independently
sampled chunk can start somewhere else: the arm jumps. RTC treats the start of the new chunk as an
inpainting problem. At every Euler step the predicted clean chunk x1 = x_t - t v(x_t, t) is pulled
toward the not-yet-executed rest of the previous chunk Y, by a vector-Jacobian product through the
velocity network:

    v' = v - w_t * J^T (W * (Y - x1)),   J = d x1 / d x_t,

with the prefix weights W over the chunk: 1 for the first `inference_delay` actions (they run before
the new chunk can arrive, so they must match), decaying to 0 at `execution_horizon` (linear or
exponential), 0 after. w_t = min(beta, (1 - tau) / tau * ((1 - tau)^2 + tau^2) / (1 - tau)^2), with
tau = 1 - t, is the paper's guidance weight clamped at beta (`max_guidance_weight`).

RTC is a guidance hook (`RTCGuidance`) on the model's one Euler loop (`VLAFlowMatching.sample_actions`):
without a previous chunk no hook is passed, so the result is exactly `policy.predict_action_chunk`'s for
the same noise. Everything is in the policy's normalized action space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from smolvla.config import ConfigError
from smolvla.model.vla import Observation

SCHEDULES = ("linear", "exp", "ones", "zeros")


@dataclass(frozen=True)
class RTCConfig:
    """LeRobot's RTC defaults: execution horizon 10, guidance clamp 10, linear prefix weights."""

    execution_horizon: int = 10
    max_guidance_weight: float = 10.0
    schedule: str = "linear"

    def __post_init__(self) -> None:
        if not isinstance(self.execution_horizon, int) or self.execution_horizon < 1:
            raise ConfigError(
                f"execution_horizon: got {self.execution_horizon!r}, expected a positive integer"
            )
        if not (isinstance(self.max_guidance_weight, (int, float)) and self.max_guidance_weight > 0):
            raise ConfigError(
                f"max_guidance_weight: got {self.max_guidance_weight!r}, expected a positive number"
            )
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule: got {self.schedule!r}, expected one of {list(SCHEDULES)}")


def prefix_weights(inference_delay: int, horizon: int, total: int, schedule: str = "linear") -> torch.Tensor:
    """(total,) weights: 1 before `inference_delay`, decaying over [inference_delay, horizon), 0 after."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule: got {schedule!r}, expected one of {list(SCHEDULES)}")
    horizon = max(0, min(horizon, total))
    start = max(0, min(inference_delay, horizon))
    i = torch.arange(total, dtype=torch.float32)
    if schedule == "ones":
        return (i < horizon).float()
    if schedule == "zeros":
        return (i < start).float()
    c = ((horizon - i) / (horizon - start + 1)).clamp(0.0, 1.0)
    if schedule == "exp":
        c = c * torch.expm1(c) / (math.e - 1)
    return torch.where(i < start, torch.ones_like(c), torch.where(i < horizon, c, torch.zeros_like(c)))


def guidance_weight(t: float, max_weight: float) -> float:
    """The paper's weight at flow time t (SmolVLA's convention: 1 is noise, 0 is data), clamped."""
    tau = 1.0 - t
    if tau <= 0.0 or t <= 0.0:
        return max_weight
    w = (1 - tau) / tau * ((1 - tau) ** 2 + tau**2) / (1 - tau) ** 2
    return min(w, max_weight)


class RTCGuidance:
    """The guidance hook: v' = v - w_t * J^T (W * (Y - x1)) at each Euler step (see the module doc).

    target Y and weights W: (B or 1, S, max_action_dim), zero on padded action dims."""

    def __init__(self, target: torch.Tensor, weights: torch.Tensor, max_guidance_weight: float) -> None:
        self.target, self.weights, self.max_guidance_weight = target, weights, max_guidance_weight

    def __call__(self, x_t: torch.Tensor, t: float, velocity_fn) -> torch.Tensor:
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            v = velocity_fn(x)
            x1 = x - t * v  # the clean chunk this step predicts
            err = ((self.target - x1) * self.weights).detach()
            (correction,) = torch.autograd.grad(x1, x, grad_outputs=err)  # J^T err
        return v.detach() - guidance_weight(t, self.max_guidance_weight) * correction


def rtc_guidance(
    prev_chunk: torch.Tensor | None,
    inference_delay: int,
    shape: tuple[int, int, int],
    action_dim: int,
    config: RTCConfig = RTCConfig(),
    device: torch.device | str = "cpu",
) -> RTCGuidance | None:
    """The hook guiding a chunk of `shape` (B, chunk_size, max_action_dim) toward `prev_chunk`
    (B, L <= chunk_size, action_dim), or None when there is nothing to guide toward (no previous
    chunk, L = 0, or all prefix weights zero)."""
    if not isinstance(inference_delay, int) or inference_delay < 0:
        raise ConfigError(f"inference_delay: got {inference_delay!r}, expected a non-negative integer")
    if prev_chunk is None or (prev_chunk.ndim == 3 and prev_chunk.shape[1] == 0):
        return None
    b, s, max_action_dim = shape
    a = action_dim
    if (
        prev_chunk.ndim != 3
        or prev_chunk.shape[0] != b
        or prev_chunk.shape[1] > s
        or prev_chunk.shape[2] != a
    ):
        raise ConfigError(f"prev_chunk: got shape {tuple(prev_chunk.shape)}, expected ({b}, L <= {s}, {a})")
    n = prev_chunk.shape[1]
    target = torch.zeros(b, s, max_action_dim, device=device)
    target[:, :n, :a] = prev_chunk.to(device=device, dtype=torch.float32)
    w = prefix_weights(inference_delay, min(config.execution_horizon, n), s, config.schedule)
    weights = torch.zeros(1, s, max_action_dim, device=device)
    weights[:, :, :a] = w.to(device)[None, :, None]  # padded action dims are not guided
    if not bool(weights.any()):
        return None
    return RTCGuidance(target, weights, config.max_guidance_weight)


def sample_actions_rtc(
    policy: Any,
    batch: dict[str, Any],
    prev_chunk: torch.Tensor | None,
    inference_delay: int,
    config: RTCConfig = RTCConfig(),
    noise: torch.Tensor | None = None,
    num_steps: int | None = None,
) -> torch.Tensor:
    """A normalized chunk (B, chunk_size, action_dim), guided toward `prev_chunk`: (B, L, action_dim),
    the previous chunk's actions from the new observation's step on (L <= chunk_size; L = 0 or None
    gives unguided sampling). `inference_delay`: how many of those run before this chunk can arrive."""
    cfg = policy.config
    obs: Observation = policy.prepare_observation(batch)
    shape = (obs.batch_size, cfg.chunk_size, cfg.max_action_dim)
    a = cfg.action_feature.shape[0]
    guidance = rtc_guidance(prev_chunk, inference_delay, shape, a, config, obs.state.device)
    return policy.predict_action_chunk(obs, noise=noise, num_steps=num_steps, guidance=guidance)


class RealTimeChunker:
    """RTC for one action stream (one robot, one episode): remembers the last chunk and the control step
    its first action was for, and guides the next chunk toward the part of it not yet executed.

        rtc = RealTimeChunker(policy, RTCConfig())
        chunk = rtc.sample(batch, timestep=t, inference_delay=d)  # normalized (1, chunk_size, A)

    `timestep`: the control step the new chunk's first action is for (the step of the observation);
    `inference_delay`: how many steps run before the new chunk arrives. Call `reset()` between episodes.
    """

    def __init__(self, policy: Any, config: RTCConfig = RTCConfig()) -> None:
        self.policy, self.config = policy, config
        self.reset()

    def reset(self) -> None:
        self.prev_chunk: torch.Tensor | None = None  # (B, chunk_size, A), normalized
        self.prev_timestep: int | None = None
        self.last_prefix_len = 0  # actions of the last chunk the latest sample was guided toward

    def remainder(self, timestep: int | None) -> torch.Tensor | None:
        """The last chunk from `timestep` on, or None (no last chunk, no timestep, no overlap)."""
        if self.prev_chunk is None or timestep is None or self.prev_timestep is None:
            return None
        offset = timestep - self.prev_timestep
        if not 0 <= offset < self.prev_chunk.shape[1]:
            return None
        return self.prev_chunk[:, offset:]

    def sample(
        self,
        batch: dict[str, Any],
        timestep: int | None,
        inference_delay: int = 0,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        prev = self.remainder(timestep)
        chunk = sample_actions_rtc(self.policy, batch, prev, inference_delay, self.config, noise=noise)
        if timestep is not None:
            self.prev_chunk, self.prev_timestep = chunk.detach(), timestep
        self.last_prefix_len = 0 if prev is None else int(prev.shape[1])
        return chunk
