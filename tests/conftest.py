"""Shared fixtures: the micro preset (a few thousand parameters) and a matching batch."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from smolvla.config import SmolVLAConfig, preset
from smolvla.policy import SmolVLAPolicy
from smolvla.processing import make_pre_post_processors, unit_stats

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def keep_sigchld_handler() -> Iterator[None]:
    """torch's DataLoader installs a SIGCHLD handler for its workers and never removes it. Left in
    place after a data test, that handler crashed this interpreter (a segfault in the eval loop) when a
    later test's subprocess exited after an in-process ONNX export with OpenVINO: each test gets back
    the handler it started with."""
    before = signal.getsignal(signal.SIGCHLD)
    yield
    signal.signal(signal.SIGCHLD, before)


def shared_dir() -> Path:
    """`../shared` beside the repo (CI clones it there); SMOLVLA_SHARED overrides. A clone of a local
    checkout made elsewhere (`git clone . /tmp/x`) finds it beside the checkout it was cloned from."""
    if "SMOLVLA_SHARED" in os.environ:
        return Path(os.environ["SMOLVLA_SHARED"])
    beside = REPO.parent / "shared"
    if beside.exists():
        return beside
    origin = subprocess.run(
        ["git", "-C", str(REPO), "config", "--get", "remote.origin.url"], capture_output=True, text=True
    ).stdout.strip()
    if origin and Path(origin).is_dir() and (Path(origin).resolve().parent / "shared").exists():
        return Path(origin).resolve().parent / "shared"
    return beside


def require_shared(sub: str) -> Path:
    path = shared_dir() / sub
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI must run with shared/ beside the repo")
        pytest.skip(f"{path} not present (set SMOLVLA_SHARED)")
    return path


def make_batch(cfg: SmolVLAConfig, b: int = 2, seed: int = 0, with_actions: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch: dict = {}
    for key, feat in cfg.image_features.items():
        batch[key] = torch.rand(b, *feat.shape, generator=g)
    batch["observation.state"] = torch.randn(b, cfg.state_feature.shape[0], generator=g)
    tokens = torch.randint(3, 200, (b, 7), generator=g)
    mask = torch.ones(b, 7, dtype=torch.bool)
    if b > 1:  # the second sample is right-padded
        tokens[1, 5:] = 2
        mask[1, 5:] = False
    batch["observation.language.tokens"] = tokens
    batch["observation.language.attention_mask"] = mask
    if with_actions:
        batch["action"] = torch.randn(b, cfg.chunk_size, cfg.action_feature.shape[0], generator=g)
        pad = torch.zeros(b, cfg.chunk_size, dtype=torch.bool)
        pad[-1, -1:] = True
        batch["action_is_pad"] = pad
    return batch


@pytest.fixture
def micro_cfg() -> SmolVLAConfig:
    return preset("micro")


@pytest.fixture
def micro_policy(micro_cfg: SmolVLAConfig) -> SmolVLAPolicy:
    torch.manual_seed(0)
    return SmolVLAPolicy.from_config(micro_cfg)


def save_checkpoint(cfg: str | SmolVLAConfig, folder: Path, processors: bool = True) -> Path:
    """A checkpoint folder (seed 0 weights) of a preset name or a config, with processors (unit stats)
    as `smolvla serve` and `smolvla eval` load it, or without them."""
    cfg = preset(cfg) if isinstance(cfg, str) else cfg
    torch.manual_seed(0)
    SmolVLAPolicy.from_config(cfg).save_pretrained(folder)
    if processors:
        pre, post = make_pre_post_processors(cfg, dataset_stats=unit_stats(cfg))
        pre.save(folder)
        post.save(folder)
    return folder


@pytest.fixture(scope="session")
def micro_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint("micro", tmp_path_factory.mktemp("micro_ckpt"))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint("tiny", tmp_path_factory.mktemp("tiny_ckpt"))
