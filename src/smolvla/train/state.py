"""Training checkpoints in LeRobot's layout, written so that a kill -9 never leaves a broken one.

    <output_dir>/checkpoints/<step:06d>/pretrained_model/   config.json, model.safetensors (or a LoRA
                                                            adapter's two PEFT files), processor files,
                                                            train_config.json
    <output_dir>/checkpoints/<step:06d>/pretrained_model_ema/  the same, with the weights' EMA
                                                            (--ema.enable; + ema_state.* below)
    <output_dir>/checkpoints/<step:06d>/training_state/     optimizer_state.safetensors,
                                                            optimizer_param_groups.json,
                                                            scheduler_state.json, rng_state.safetensors,
                                                            training_step.json
    <output_dir>/checkpoints/last -> <step:06d>

A checkpoint is built in a hidden folder and renamed into place; `last` is a symlink replaced by an
atomic rename. So `last` always names a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from smolvla.checkpoint import CheckpointError
from smolvla.io import read_json_object, write_atomic, write_json

PRETRAINED = "pretrained_model"
TRAINING_STATE = "training_state"
LAST = "last"


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / "checkpoints" / f"{step:06d}"


def is_complete(folder: Path) -> bool:
    """A checkpoint folder holding its weights (full, or a LoRA adapter) and its training step (what
    resuming needs first)."""
    weights = ("model.safetensors", "adapter_model.safetensors")
    return (
        any((folder / PRETRAINED / w).is_file() for w in weights)
        and (folder / TRAINING_STATE / "training_step.json").is_file()
    )


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """The complete `checkpoints/<step>` folders, oldest first (`last` and hidden build folders aside)."""
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.isdigit() and p.is_dir() and not p.is_symlink()]
    return sorted((p for p in found if is_complete(p)), key=lambda p: int(p.name))


def last_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint `last` names, when it names a complete one."""
    last = output_dir / "checkpoints" / LAST
    return last.resolve() if last.exists() and is_complete(last.resolve()) else None


def resume_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint a resume starts from: `last`, or the newest complete one when `last` is broken
    (it is replaced atomically, so only a hand or a failing disk breaks it; the numbered folders are
    renamed into place whole, so the newest of them is the last one saved)."""
    found = complete_checkpoints(output_dir)
    return last_checkpoint(output_dir) or (found[-1] if found else None)


def checkpoint_step(folder: Path) -> int:
    """The step a checkpoint was saved at (its training_step.json)."""
    return int(read_json_object(folder / TRAINING_STATE / "training_step.json")["step"])


def save_optimizer(opt: torch.optim.Optimizer, folder: Path) -> None:
    """Optimizer tensors as safetensors (`state.<param>.<name>`), its param groups as JSON."""
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            tensors[f"state.{pid}.{name}"] = v if torch.is_tensor(v) else torch.tensor(v)
    write_atomic(
        folder / "optimizer_state.safetensors", save({k: v.contiguous() for k, v in tensors.items()})
    )
    write_json(folder / "optimizer_param_groups.json", sd["param_groups"])


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _json(path: Path) -> dict[str, Any]:
    return read_json_object(path, error=CheckpointError)


def load_optimizer(opt: torch.optim.Optimizer, folder: Path) -> None:
    try:
        groups = json.loads((folder / "optimizer_param_groups.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / 'optimizer_param_groups.json'}: not readable JSON ({e})") from None
    tensors = _tensors(folder / "optimizer_state.safetensors")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every random generator the loop may touch: torch (CPU, CUDA), numpy, Python."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy.keys"] = torch.from_numpy(keys.astype(np.int64))
    py = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)], "python": [py[0], list(py[1]), py[2]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy.keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    output_dir: Path,
    step: int,
    save_model: Any,  # callable(folder): writes the policy, its processors and train_config.json
    opt: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    extra: dict[str, Any],
    also: Callable[[Path], None] | None = None,
) -> Path:
    """Writes checkpoint `step` and points `last` at it. Returns its folder. `also(folder)` writes more
    into the checkpoint before it is renamed into place (the EMA's model and state)."""
    final = checkpoint_dir(output_dir, step)
    tmp = final.with_name(f".tmp-{final.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / TRAINING_STATE).mkdir(parents=True)
    save_model(tmp / PRETRAINED)
    state = tmp / TRAINING_STATE
    save_optimizer(opt, state)
    write_json(state / "scheduler_state.json", scheduler.state_dict())
    tensors, meta = rng_state()
    write_atomic(state / "rng_state.safetensors", save(tensors))
    write_json(state / "rng_state.json", meta)
    write_json(state / "training_step.json", {"step": step, **extra})
    if also is not None:
        also(tmp)
    _fsync_tree(tmp)
    if final.exists():  # re-saving a step (e.g. after resume at that step)
        shutil.rmtree(final)
    tmp.rename(final)
    link = output_dir / "checkpoints" / LAST
    tmp_link = link.with_name(f".{LAST}.tmp")
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    tmp_link.symlink_to(final.name)
    tmp_link.replace(link)
    return final


def load_training_state(
    folder: Path, opt: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> dict[str, Any]:
    """Restores optimizer, scheduler and RNGs from a checkpoint folder; returns training_step.json."""
    state = folder / TRAINING_STATE
    load_optimizer(opt, state)
    scheduler.load_state_dict(_json(state / "scheduler_state.json"))
    set_rng_state(_tensors(state / "rng_state.safetensors"), _json(state / "rng_state.json"))
    return _json(state / "training_step.json")


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(Path(dirpath) / name, "rb") as f:
                os.fsync(f.fileno())
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
