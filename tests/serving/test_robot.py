"""The Meta-World robot, and the robot client driving it through a real server in sync and async mode."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco: headless rendering

import numpy as np
import pytest
import torch

from smolvla.serving.client import PolicyClient, RobotClient, RobotClientConfig
from smolvla.serving.mapping import PolicyFeatures, RobotFeatures, check_mapping
from smolvla.serving.robot import MetaWorldRobot, Robot
from smolvla.serving.safety import ActionGuard
from smolvla.serving.server import InferenceEngine, PolicyServer, ServerConfig, ServerThread
from smolvla.serving.session import MappedRobot

pytest.importorskip("metaworld")


@pytest.fixture(scope="module")
def robot():
    r = MetaWorldRobot("drawer-close-v3", image_size=64, max_episode_steps=24)
    yield r
    r.disconnect()


def test_metaworld_robot_is_a_robot(robot):
    assert isinstance(robot, Robot)
    assert robot.observation_features == {
        "hand_x": float,
        "hand_y": float,
        "hand_z": float,
        "gripper": float,
        "camera1": (64, 64, 3),
    }
    assert list(robot.action_features) == ["dx", "dy", "dz", "grip"]
    robot.reset(seed=1_000_000)
    obs = robot.get_observation()
    assert set(obs) == set(robot.observation_features)
    assert obs["camera1"].shape == (64, 64, 3) and obs["camera1"].dtype == np.uint8
    assert all(isinstance(obs[k], float) for k in ("hand_x", "hand_y", "hand_z", "gripper"))
    sent = robot.send_action({"dx": 5.0, "dy": 0.0, "dz": 0.0, "grip": 0.0})
    assert sent == {"dx": 1.0, "dy": 0.0, "dz": 0.0, "grip": 0.0} and robot.steps == 1  # clipped as the env
    assert robot.get_observation()["hand_x"] != obs["hand_x"]
    assert "drawer" in robot.instruction


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_client_drives_the_simulated_robot_through_the_server(robot, tiny_ckpt, mode):
    # The untrained policy's noise comes from torch's global generator: seeded, so that what earlier
    # tests drew cannot make this episode succeed early
    torch.manual_seed(0)
    engine = InferenceEngine.load(str(tiny_ckpt))
    with ServerThread(PolicyServer(engine, ServerConfig(port=0))) as st, PolicyClient(st.url) as policy:
        robot.reset(seed=1_000_000)
        config = RobotClientConfig(task=robot.instruction, fps=200, mode=mode, similarity_atol=0)
        mapping = check_mapping(RobotFeatures.of(robot), PolicyFeatures.from_metadata(policy.metadata), {})
        client = RobotClient(MappedRobot(robot, mapping, ActionGuard(mapping.robot.action)), policy, config)
        client.reset()
        with client:
            stats = client.run(max_ticks=200, done=lambda: robot.done)
    assert robot.done and robot.steps == 24 == stats.executed
    # every step ran exactly once, in order, and the server answered several observations
    assert [a.timestep for a in stats.log] == list(range(24))
    assert stats.chunks >= 2 and len(stats.latencies_s) == stats.chunks
    assert all(np.isfinite(a.action).all() for a in stats.log)
