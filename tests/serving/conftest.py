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


# An SO-101-shaped policy (6 joints, two 24x32 cameras) with a dataset's stats in degrees: what the
# robot-client tests drive the fake arm with. Joint ranges differ per joint, so limits are per joint.
ARM_MIN = [-60.0, -50.0, -40.0, -30.0, -90.0, 0.0]
ARM_MAX = [60.0, 50.0, 40.0, 30.0, 90.0, 100.0]


def save_arm_checkpoint(folder: Path, chunk_size: int = 10, cameras: int = 2) -> Path:
    import dataclasses

    from smolvla.config import FeatureType, PolicyFeature, preset
    from smolvla.policy import SmolVLAPolicy
    from smolvla.processing import make_pre_post_processors

    cfg = dataclasses.replace(
        preset("micro"),
        input_features={
            **{
                f"observation.images.camera{i + 1}": PolicyFeature(FeatureType.VISUAL, (3, 24, 32))
                for i in range(cameras)
            },
            "observation.state": PolicyFeature(FeatureType.STATE, (6,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (6,))},
        max_state_dim=8,
        max_action_dim=8,
        chunk_size=chunk_size,
        n_action_steps=chunk_size,
    )
    torch.manual_seed(0)
    SmolVLAPolicy.from_config(cfg).save_pretrained(folder)
    mid = [(a + b) / 2 for a, b in zip(ARM_MIN, ARM_MAX, strict=True)]
    joint = {"mean": mid, "std": [30.0] * 6, "min": ARM_MIN, "max": ARM_MAX}
    pre, post = make_pre_post_processors(cfg, dataset_stats={"observation.state": joint, "action": joint})
    pre.save(folder)
    post.save(folder)
    return folder


@pytest.fixture(scope="session")
def arm_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_arm_checkpoint(tmp_path_factory.mktemp("arm_ckpt"))
