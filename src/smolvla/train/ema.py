"""An exponential moving average of the trained weights (`--ema.enable=true`).

The schedule is LeRobot's (main, diffusers' EMAModel with warm-up): see `EMAConfig.decay_at`. What
differs, on purpose:
- only parameters that train are averaged; a frozen one never changes, so its average is itself and a
  second copy of the frozen VLM would only cost memory;
- the average is kept in fp32 whatever the parameter's dtype, by name, and saved as safetensors
  (`training_state/ema_state.safetensors` + `ema_state.json`), so a resumed run continues it bit for bit;
- it works with LoRA (the adapters are what trains; `pretrained_model_ema/` is then an adapter too).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn

from smolvla.checkpoint import CheckpointError, check_keys, check_tensor, read_safetensors
from smolvla.io import read_json_object, write_atomic, write_json
from smolvla.train.config import EMAConfig

STATE_FILE = "ema_state.safetensors"
META_FILE = "ema_state.json"
EMA_MODEL_DIR = "pretrained_model_ema"


class EMA:
    """The average of `model`'s trainable parameters. Call `update()` after each optimizer step."""

    def __init__(self, cfg: EMAConfig, model: nn.Module) -> None:
        self.cfg = cfg
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().float().clone() for n, p in self.params.items()}
        self.step = 0  # optimizer steps averaged
        self.decay = 0.0  # of the last update (logged)

    @torch.no_grad()
    def update(self) -> None:
        self.step += 1
        self.decay = self.cfg.decay_at(self.step)
        for name, p in self.params.items():
            if self.decay == 0.0:
                self.shadow[name].copy_(p)
            else:
                self.shadow[name].lerp_(p.detach().float(), 1 - self.decay)

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """The model holds the average inside the block and its own weights again after it (exactly:
        they are copied aside, not recomputed)."""
        kept = {n: p.detach().clone() for n, p in self.params.items()}
        for name, p in self.params.items():
            p.copy_(self.shadow[name])
        try:
            yield
        finally:
            for name, p in self.params.items():
                p.copy_(kept[name])

    def save(self, folder: Path) -> None:
        state = {n: t.detach().to("cpu").contiguous() for n, t in self.shadow.items()}
        write_atomic(folder / STATE_FILE, save(state, metadata={"format": "pt"}))
        write_json(folder / META_FILE, {"step": self.step, "decay": self.decay})

    @torch.no_grad()
    def load(self, folder: Path) -> None:
        """The average a checkpoint's training_state holds; its names must be this run's parameters."""
        path = folder / STATE_FILE
        if not path.is_file():
            raise CheckpointError(
                f"{folder}: no {STATE_FILE}, but this run keeps an EMA (--ema.enable=true was saved in "
                "its train_config.json)"
            )
        tensors = read_safetensors(path)
        check_keys(self.shadow, tensors, str(path))
        for name, s in self.shadow.items():
            check_tensor(tensors[name], s, name, str(path))
            s.copy_(tensors[name])
        meta = read_json_object(folder / META_FILE, error=CheckpointError)
        step = meta.get("step")
        if not isinstance(step, int) or step < 0:
            raise CheckpointError(f"{folder / META_FILE}: step is {step!r}, expected a non-negative integer")
        self.step, self.decay = step, float(meta.get("decay", 0.0))
