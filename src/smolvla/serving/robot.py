"""Robots as the robot client sees them: LeRobot's `Robot` API, and the one robot that runs here, Meta-World.

The API is LeRobot's, so any robot LeRobot drives (`make_robot_from_config`: SO-100/101, Koch, LeKiwi,
third-party `lerobot_robot_*` plugins) is driven as it is, and a plugin written for another arm against
`Robot` below works in LeRobot too:

- `observation_features`: `{"<motor>.pos": float, ..., "<camera>": (H, W, 3)}`, known before `connect()`;
  the float features, in this order, are `observation.state` (LeRobot's `hw_to_dataset_features`);
- `action_features`: `{"<motor>.pos": float, ...}`, the action vector's order;
- `get_observation()` -> those keys (floats, uint8 H x W x 3 RGB frames);
- `send_action({name: float})` -> what was actually sent (a driver may clip it).

`smolvla.serving.mapping` turns these into the policy's observation and back. No torch here: this runs on
the robot's computer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class Robot(ABC):
    """LeRobot's robot interface, without LeRobot. Subclass it for an arm LeRobot has no driver for."""

    name: str = "robot"

    @property
    @abstractmethod
    def observation_features(self) -> dict[str, type | tuple[int, ...]]:
        """`{"<joint>": float, "<camera>": (H, W, 3)}`; floats in `observation.state`'s order."""

    @property
    @abstractmethod
    def action_features(self) -> dict[str, type]:
        """`{"<joint>": float}` in the action vector's order."""

    @property
    @abstractmethod
    def is_connected(self) -> bool: ...

    @abstractmethod
    def connect(self, calibrate: bool = True) -> None: ...

    @abstractmethod
    def get_observation(self) -> dict[str, Any]:
        """Every observation feature: floats for joints, uint8 (H, W, 3) RGB frames for cameras."""

    @abstractmethod
    def send_action(self, action: dict[str, float]) -> dict[str, float]:
        """Moves toward `action` (every action feature); returns what was sent (e.g. after clipping)."""

    @abstractmethod
    def disconnect(self) -> None: ...

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.is_connected:
            self.disconnect()


class MetaWorldRobot(Robot):
    """A Meta-World task as a robot: one `send_action` is one env step; the episode's outcome is in
    `success`, `done` and `steps`. Its features are named as in `smolvla record metaworld`'s datasets
    (state `hand_x hand_y hand_z gripper`, action `dx dy dz grip`, camera `camera1`)."""

    name = "metaworld"
    STATE = ("hand_x", "hand_y", "hand_z", "gripper")
    ACTION = ("dx", "dy", "dz", "grip")
    CAMERA = "camera1"

    def __init__(self, task: str, image_size: int = 64, max_episode_steps: int = 400) -> None:
        self.task_name = task
        self.image_size = image_size
        self.max_episode_steps = max_episode_steps
        self.env: Any = None
        self._obs: dict[str, np.ndarray] | None = None
        self.success = False
        self.done = False
        self.steps = 0

    @property
    def observation_features(self) -> dict[str, type | tuple[int, ...]]:
        return {**dict.fromkeys(self.STATE, float), self.CAMERA: (self.image_size, self.image_size, 3)}

    @property
    def action_features(self) -> dict[str, type]:
        return dict.fromkeys(self.ACTION, float)

    @property
    def is_connected(self) -> bool:
        return self.env is not None

    @property
    def instruction(self) -> str:
        from smolvla.envs.metaworld import INSTRUCTIONS

        return INSTRUCTIONS[self.task_name]

    def connect(self, calibrate: bool = True) -> None:
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

    def get_observation(self) -> dict[str, Any]:
        if self._obs is None:
            raise RuntimeError("get_observation: call reset(seed) first")
        from smolvla.envs.metaworld import STATE

        state = self._obs[STATE]
        return {
            **{k: float(v) for k, v in zip(self.STATE, state, strict=True)},
            self.CAMERA: self.env.render(),
        }

    def send_action(self, action: dict[str, float]) -> dict[str, float]:
        if self.done:  # the episode is over; a real robot would hold still
            return dict.fromkeys(self.ACTION, 0.0)
        a = np.clip(np.array([action[k] for k in self.ACTION], np.float32), -1.0, 1.0)
        self._obs, _, terminated, truncated, info = self.env.step(a)
        self.steps += 1
        self.success = self.success or bool(info["success"])
        self.done = terminated or truncated
        return {k: float(v) for k, v in zip(self.ACTION, a, strict=True)}
