"""A fake arm with LeRobot's robot API: what stands in for the hardware (no serial port, no camera).

Motors named as an SO-101's, positions in degrees that move to each goal at once; cameras that render
the joint positions as bars, so frames change with the arm. Every call is logged (in memory, and as JSON
lines when `log_path` is set, for a test in another process to read): connect, each goal written to
the motors, disconnect with the torque left on or off. `max_relative_target` clamps as LeRobot's SO
driver does (against the present position). Plain numpy: the project's CI drives it duck-typed, and
`tests/interop/smolvla_fake_robot` registers it with LeRobot's `RobotConfig`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

SO101_MOTORS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")


class FakeArmCore:
    name = "fake_arm"

    def __init__(
        self,
        motors: tuple[str, ...] = SO101_MOTORS,
        cameras: tuple[str, ...] = ("front", "wrist"),
        height: int = 24,
        width: int = 32,
        start: tuple[float, ...] | None = None,
        max_relative_target: float | None = None,
        disable_torque_on_disconnect: bool = True,
        log_path: str | None = None,
    ) -> None:
        self.motors, self.camera_names = tuple(motors), tuple(cameras)
        self.height, self.width = height, width
        self.pos = np.asarray(start if start is not None else [0.0] * len(motors), np.float64)
        self.max_relative_target = max_relative_target
        self.disable_torque_on_disconnect = disable_torque_on_disconnect
        self.log_path = None if log_path is None else Path(log_path)
        self.events: list[dict[str, Any]] = []
        self.connected = False
        self.torque = False

    def _log(self, **event: Any) -> None:
        event["t"] = time.time()
        self.events.append(event)
        if self.log_path is not None:
            with self.log_path.open("a") as f:
                f.write(json.dumps(event) + "\n")

    @property
    def observation_features(self) -> dict[str, Any]:
        return {
            **{f"{m}.pos": float for m in self.motors},
            **{c: (self.height, self.width, 3) for c in self.camera_names},
        }

    @property
    def action_features(self) -> dict[str, type]:
        return {f"{m}.pos": float for m in self.motors}

    @property
    def is_connected(self) -> bool:
        return self.connected

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def connect(self, calibrate: bool = True) -> None:
        if self.connected:
            raise RuntimeError("already connected")
        self.connected = self.torque = True
        self._log(kind="connect")

    def render(self, cam: int) -> np.ndarray:
        """Each joint a bar whose length is its position (-100..100 over the width)."""
        img = np.full((self.height, self.width, 3), 40 * cam, np.uint8)
        rows = max(1, self.height // len(self.motors))
        for i, p in enumerate(self.pos):
            n = int(np.clip((p + 100) / 200 * self.width, 0, self.width))
            img[i * rows : (i + 1) * rows, :n, i % 3] = 255
        return img

    def get_observation(self) -> dict[str, Any]:
        if not self.connected:
            raise RuntimeError("get_observation: not connected")
        obs: dict[str, Any] = {f"{m}.pos": float(p) for m, p in zip(self.motors, self.pos, strict=True)}
        for i, c in enumerate(self.camera_names):
            obs[c] = self.render(i)
        return obs

    def send_action(self, action: dict[str, float]) -> dict[str, float]:
        if not self.connected:
            raise RuntimeError("send_action: not connected")
        goal = np.array([float(action[f"{m}.pos"]) for m in self.motors])
        if self.max_relative_target is not None:  # as LeRobot's ensure_safe_goal_position
            goal = self.pos + np.clip(goal - self.pos, -self.max_relative_target, self.max_relative_target)
        self.pos = goal
        self._log(kind="goal", goal=goal.tolist())
        return {f"{m}.pos": float(g) for m, g in zip(self.motors, goal, strict=True)}

    def disconnect(self) -> None:
        if not self.connected:
            raise RuntimeError("disconnect: not connected")
        self.connected = False
        self.torque = not self.disable_torque_on_disconnect
        self._log(kind="disconnect", torque=self.torque)

    def goals(self) -> np.ndarray:
        return np.array([e["goal"] for e in self.events if e["kind"] == "goal"]).reshape(-1, len(self.motors))
