"""Optimizer and learning-rate schedule from the policy's presets, as LeRobot builds them (spec §7)."""

from __future__ import annotations

import math

import torch

from smolvla.config import ConfigError, SmolVLAConfig


def make_optimizer(params: list[torch.nn.Parameter], cfg: SmolVLAConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (frozen ones get no gradient and no state)."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ConfigError("optimizer: no trainable parameter (every part of the policy is frozen)")
    return torch.optim.AdamW(
        trainable,
        lr=cfg.optimizer_lr,
        betas=tuple(cfg.optimizer_betas),
        eps=cfg.optimizer_eps,
        weight_decay=cfg.optimizer_weight_decay,
        # one fused kernel instead of ~10 small ops per tensor: the default loop cost a tiny-preset
        # CPU step 12 % of its time
        fused=all(p.device.type in ("cpu", "cuda") for p in trainable),
    )


def schedule_steps(cfg: SmolVLAConfig, total_steps: int) -> tuple[int, int]:
    """(warmup, decay) steps. Runs shorter than the decay horizon scale both down (LeRobot's rule), so a
    5,000-step run warms up for 166 steps and decays to the floor at its last step."""
    warmup, decay = cfg.scheduler_warmup_steps, cfg.scheduler_decay_steps
    if total_steps < decay:
        warmup, decay = int(warmup * total_steps / decay), total_steps
    return warmup, decay


def lr_factor(step: int, warmup: int, decay: int, floor: float) -> float:
    """Multiplier of the peak learning rate at `step`: linear warm-up from 1/(W+1), then cosine decay to
    `floor` (= decay_lr / peak_lr). The cosine counts from step 0, not from the end of warm-up."""
    if step < warmup:
        return (1 / (warmup + 1) - 1) * (1 - step / warmup) + 1
    cos = 0.5 * (1 + math.cos(math.pi * min(step, decay) / decay))
    return (1 - floor) * cos + floor


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: SmolVLAConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup, decay = schedule_steps(cfg, total_steps)
    floor = cfg.scheduler_decay_lr / cfg.optimizer_lr
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, warmup, decay, floor))
