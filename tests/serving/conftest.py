"""Fixtures for the serving tests: checkpoints with processors (random weights), a server on a thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The micro models run thousands of tiny ops; on a loaded machine two intra-op threads waiting
    on each other make every op wait for a scheduler slot. One thread keeps these tests fast."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
