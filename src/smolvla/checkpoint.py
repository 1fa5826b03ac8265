"""Checkpoint files: safetensors state dicts with strict key checks, and backbone resolution.

A LeRobot SmolVLA checkpoint stores mixed dtypes (bf16 backbone and expert, fp32 projections). We
read each tensor's dtype from the file, copy it into the constructed parameter, and remember it, so
that saving writes the file back bit-identically.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from smolvla.config import KNOWN_BACKBONES, BackboneConfig, ConfigError, SmolVLAConfig
from smolvla.errors import SmolVLAError
from smolvla.hub import looks_like_repo_id, resolve_dir
from smolvla.io import read_json_object, write_atomic

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VLM_DIR = "vlm"  # where we store a backbone that is not known by name, beside the checkpoint


class CheckpointError(SmolVLAError, ValueError):
    """A checkpoint file is missing, corrupt, or does not fit the model."""


class SafetensorsFile:
    """A safetensors file, read a few tensors at a time through `safe_open`.

    Each tensor read is a view of a private copy-on-write mapping of the file: only the pages touched
    are read, they stay resident only while a tensor of that read is alive, and writing to a tensor
    never changes the file. So a loader that converts one block at a time holds one block of the file
    at a time, and a tensor kept as it is (an embedding table) pages in only the rows looked up."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with self._open() as f:
            self._keys = list(f.keys())

    def keys(self) -> list[str]:
        return list(self._keys)

    def read(self, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """The tensors `keys` (all when None), as stored (dtypes kept)."""
        with self._open() as f:
            return {k: f.get_tensor(k) for k in (self._keys if keys is None else keys)}

    @contextmanager
    def _open(self) -> Iterator[Any]:
        try:
            with safe_open(str(self.path), framework="pt") as f:
                yield f
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: no such file") from None
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{self.path}: not a valid safetensors file ({e})") from e


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, as stored (dtypes kept)."""
    return SafetensorsFile(path).read()


def check_keys(expected: Iterable[str], found: Iterable[str], source: str) -> None:
    """Raises CheckpointError unless `found` (a file's keys) are exactly `expected` (a model's),
    listing the missing and unexpected keys."""
    expected, found = set(expected), set(found)
    missing = sorted(expected - found)
    unexpected = sorted(found - expected)
    if missing or unexpected:
        legacy = [
            k
            for k in unexpected
            if k.startswith(("normalize_inputs.", "normalize_targets.", "unnormalize_outputs."))
        ]
        hint = ""
        if legacy:
            hint = (
                " The unexpected keys include legacy normalization buffers: this checkpoint predates "
                "processor files; migrate it with LeRobot's processor/migrate_policy_normalization.py."
            )
        raise CheckpointError(
            f"{source}: state dict does not match the model "
            f"({len(missing)} missing, {len(unexpected)} unexpected)."
            f"\n  missing: {_short(missing)}\n  unexpected: {_short(unexpected)}{hint}"
        )


def check_tensor(t: torch.Tensor, p: torch.Tensor, key: str, source: str) -> None:
    """A file's tensor `t` fits the model's parameter `p`: same shape, finite floating point."""
    if tuple(t.shape) != tuple(p.shape):
        raise CheckpointError(
            f"{source}: {key} has shape {tuple(t.shape)}, the model expects {tuple(p.shape)}"
        )
    if not t.is_floating_point() or not torch.isfinite(t).all():
        raise CheckpointError(f"{source}: {key} is not a finite floating-point tensor")


def load_state(
    module: nn.Module, tensors: dict[str, torch.Tensor], source: str, ignore_prefixes: tuple[str, ...] = ()
) -> dict[str, torch.dtype]:
    """Copies `tensors` into `module` (casting to each parameter's dtype). Every parameter must be
    given and every tensor must be used: a mismatch raises, listing missing and unexpected keys.
    Returns the dtype each tensor had in the file."""
    params = module.state_dict()
    tensors = {k: v for k, v in tensors.items() if not k.startswith(ignore_prefixes)}
    check_keys(params, tensors, source)
    dtypes = {}
    with torch.no_grad():
        for k, p in params.items():
            t = tensors[k]
            check_tensor(t, p, k, source)
            p.copy_(t)
            dtypes[k] = t.dtype
    return dtypes


def _short(keys: list[str], n: int = 12) -> str:
    if not keys:
        return "none"
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def save_state(module: nn.Module, path: Path, dtypes: dict[str, torch.dtype] | None = None) -> None:
    """Writes the state dict as one safetensors file, each tensor in `dtypes[key]` if given.

    Written to a temporary name and renamed, so an interrupted save never leaves a truncated file.
    """
    dtypes = dtypes or {}
    state = {
        k: v.detach().to("cpu", dtypes.get(k, v.dtype)).contiguous() for k, v in module.state_dict().items()
    }
    write_atomic(path, save(state, metadata={"format": "pt"}))


def is_portable_name(name: str) -> bool:
    """A backbone or tokenizer name that means the same on any machine: a name we know, or a hub repo id."""
    return name in KNOWN_BACKBONES or (looks_like_repo_id(name) and not Path(name).exists())


def bundle_backbone_files(src: Path | None, save_dir: Path) -> str:
    """Copies a local backbone folder's tokenizer and processor files into `save_dir/vlm`, so that a
    checkpoint does not depend on a folder elsewhere on this machine. Returns the name to record."""
    dst = save_dir / VLM_DIR
    dst.mkdir(parents=True, exist_ok=True)
    if src is not None and src.resolve() != dst.resolve():
        for f in src.glob("*.json"):
            if f.name != CONFIG_FILE and (
                f.name.startswith(("tokenizer", "special_tokens")) or "processor" in f.name
            ):
                write_atomic(dst / f.name, f.read_bytes())
    return VLM_DIR


def resolve_backbone(
    cfg: SmolVLAConfig, checkpoint_dir: Path | None = None
) -> tuple[BackboneConfig, Path | None]:
    """The backbone architecture named by `cfg.vlm_model_name`, and the folder holding its files
    (config.json, tokenizer.json, maybe weights), if any.

    Looked up in order: a folder relative to the checkpoint (LeRobot-made test fixtures, and our own
    checkpoints of custom backbones); a backbone known by name (no download needed); a local folder;
    a hub repo (or the local HF cache when offline).
    """
    name = cfg.vlm_model_name
    if checkpoint_dir is not None and (checkpoint_dir / name / CONFIG_FILE).is_file():
        folder: Path | None = checkpoint_dir / name
    elif name in KNOWN_BACKBONES:
        return KNOWN_BACKBONES[name], None
    else:
        folder = resolve_dir(
            name, relative_to=checkpoint_dir, allow_patterns=["*.json"], what="backbone (vlm_model_name)"
        )
    path = folder / CONFIG_FILE
    backbone = BackboneConfig.from_hf_dict(read_json_object(path, ConfigError), source=str(path))
    tok = folder / "tokenizer.json"
    if tok.is_file():
        vocab = {t["content"]: t["id"] for t in read_json_object(tok, ConfigError).get("added_tokens", [])}
        backbone = BackboneConfig(
            vision=backbone.vision,
            text=backbone.text,
            scale_factor=backbone.scale_factor,
            image_token_id=backbone.image_token_id,
            global_image_token_id=vocab.get("<global-img>", backbone.global_image_token_id),
            fake_image_token_id=vocab.get("<fake_token_around_image>", backbone.fake_image_token_id),
        )
    return backbone, folder


def backbone_weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a backbone repo (single file or sharded with an index)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(read_json_object(index, CheckpointError)["weight_map"].values()))
        return [folder / s for s in shards]
    single = folder / MODEL_FILE
    if single.is_file():
        return [single]
    raise CheckpointError(
        f"{folder}: no model.safetensors or model.safetensors.index.json (backbone weights)"
    )
