"""Robots and cameras as the robot client sees them, and the one robot that runs here: Meta-World.

A physical arm comes as a plugin implementing `Robot` (and its cameras `Camera`): observations under
the policy's feature names (`observation.images.<cam>` uint8 H x W x 3 frames at native resolution,
`observation.state` float32), actions as float32 arrays. No torch here: this runs on the robot side.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

import numpy as np

from smolvla.serving.protocol import STATE_KEY


class Camera(Protocol):
    """A camera: `read()` gives the latest frame, uint8 H x W x 3 (RGB)."""

    def read(self) -> np.ndarray: ...


class Robot(ABC):
    """The robot interface of the client. `cameras` maps policy camera keys to cameras."""

    cameras: dict[str, Camera]

    @property
    @abstractmethod
    def action_dim(self) -> int: ...

    @abstractmethod
    def connect(self) -> None: ...

    @abstractmethod
    def disconnect(self) -> None: ...

    @abstractmethod
    def read_state(self) -> np.ndarray:
        """The proprioceptive state (float32)."""

    @abstractmethod
    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Executes one action; returns what was actually sent (e.g. after clipping)."""

    def get_observation(self) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {key: cam.read() for key, cam in self.cameras.items()}
        obs[STATE_KEY] = np.asarray(self.read_state(), dtype=np.float32)
        return obs

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()


class _SimCamera:
    def __init__(self, robot: MetaWorldRobot) -> None:
        self._robot = robot

    def read(self) -> np.ndarray:
        return self._robot.env.render()


class MetaWorldRobot(Robot):
    """A Meta-World task as a robot: one `send_action` is one env step; the episode's outcome is in
    `success`, `done` and `steps`. `camera_key` is the policy's camera the env's camera feeds."""

    def __init__(
        self,
        task: str,
        image_size: int = 64,
        max_episode_steps: int = 400,
        camera_key: str = "observation.images.camera1",
    ) -> None:
        self.task_name = task
        self.image_size = image_size
        self.max_episode_steps = max_episode_steps
        self.camera_key = camera_key
        self.env: Any = None
        self.cameras = {camera_key: _SimCamera(self)}
        self._obs: dict[str, np.ndarray] | None = None
        self.success = False
        self.done = False
        self.steps = 0

    @property
    def action_dim(self) -> int:
        return 4

    @property
    def instruction(self) -> str:
        from smolvla.envs.metaworld import INSTRUCTIONS

        return INSTRUCTIONS[self.task_name]

    def connect(self) -> None:
        if self.env is None:
            from smolvla.envs.metaworld import MetaWorldEnv

            self.env = MetaWorldEnv(
                self.task_name, image_size=self.image_size, max_episode_steps=self.max_episode_steps
            )

    def disconnect(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    def reset(self, seed: int) -> None:
        self.connect()
        self._obs, _ = self.env.reset(seed=seed)
        self.success = self.done = False
        self.steps = 0

    def read_state(self) -> np.ndarray:
        if self._obs is None:
            raise RuntimeError("read_state: call reset(seed) first")
        from smolvla.envs.metaworld import STATE

        return self._obs[STATE]

    def send_action(self, action: np.ndarray) -> np.ndarray:
        if self.done:  # the episode is over; a real robot would hold still
            return np.zeros(4, np.float32)
        a = np.clip(np.asarray(action, dtype=np.float32).reshape(4), -1.0, 1.0)
        self._obs, _, terminated, truncated, info = self.env.step(a)
        self.steps += 1
        self.success = self.success or bool(info["success"])
        self.done = terminated or truncated
        return a
