"""Fixtures for the serving tests: checkpoints with processors (random weights), a server on a thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from smolvla.cli import unit_stats
from smolvla.config import preset
from smolvla.policy import SmolVLAPolicy
from smolvla.processing import make_pre_post_processors


def save_checkpoint(name: str, folder: Path) -> Path:
    """A checkpoint folder with processors (unit stats), as `smolvla serve` loads it."""
    cfg = preset(name)
    torch.manual_seed(0)
    policy = SmolVLAPolicy.from_config(cfg)
    policy.save_pretrained(folder)
    pre, post = make_pre_post_processors(cfg, dataset_stats=unit_stats(cfg))
    pre.save(folder)
    post.save(folder)
    return folder


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The micro models run thousands of tiny ops; on a loaded machine two intra-op threads waiting
    on each other make every op wait for a scheduler slot. One thread keeps these tests fast."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def micro_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint("micro", tmp_path_factory.mktemp("micro_ckpt"))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint("tiny", tmp_path_factory.mktemp("tiny_ckpt"))


def micro_obs(seed: int = 0) -> dict:
    """A valid observation for the micro preset: one uint8 HWC camera, one float CHW camera."""
    rng = np.random.default_rng(seed)
    return {
        "observation.images.camera1": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
        "observation.images.camera2": rng.random((3, 12, 16), dtype=np.float32),
        "observation.state": rng.normal(size=3).astype(np.float32),
        "task": "pick up the cube",
    }


@pytest.fixture
def micro_engine(micro_ckpt: Path):
    from smolvla.serving.server import InferenceEngine

    return InferenceEngine.load(str(micro_ckpt))


@pytest.fixture
def server(micro_engine) -> Iterator:
    """A running server on a free loopback port (a `ServerThread`)."""
    from smolvla.serving.server import PolicyServer, ServerConfig, ServerThread

    with ServerThread(PolicyServer(micro_engine, ServerConfig(port=0, idle_timeout=5.0))) as st:
        yield st
