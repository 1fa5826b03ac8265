"""Between a robot and a policy: which motor readings make `observation.state`, which camera feeds which
of the policy's image inputs, which motor each action dimension drives. Checked before the first action.

The robot's side is its features (`smolvla.serving.robot`, LeRobot's API): joints are the float
features in their order (as `hw_to_dataset_features` records them), cameras the (H, W, 3) ones,
`observation.images.<camera>`. The policy's side is what the server announces on connect (cameras and
their trained shapes, state and action widths). `--rename_map` (LeRobot's: `{"observation.images.front":
"observation.images.camera1"}`) renames the robot's cameras to the policy's. A mismatch is refused with
both sides and the rename map that would fix the camera names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smolvla.errors import SmolVLAError
from smolvla.serving.protocol import IMAGES_PREFIX, STATE_KEY


class MappingError(SmolVLAError, ValueError):
    """The robot and the policy do not fit together (sizes, cameras), or a feature cannot be read."""


# An aspect ratio this close is the same camera geometry (rounding of odd sizes)
ASPECT_TOLERANCE = 0.01


@dataclass(frozen=True)
class RobotFeatures:
    """A robot's features: joint names (observation.state's order), cameras (H, W, C), action names."""

    state: tuple[str, ...]
    cameras: dict[str, tuple[int, int, int]]
    action: tuple[str, ...]
    robot_type: str = "robot"

    @classmethod
    def of(cls, robot: Any) -> RobotFeatures:
        """From any object with LeRobot's `observation_features` / `action_features`."""
        name = str(getattr(robot, "name", None) or type(robot).__name__)
        obs, act = dict(robot.observation_features), dict(robot.action_features)
        state, cams = [], {}
        for key, ft in obs.items():
            if ft is float:
                state.append(key)
            elif (
                isinstance(ft, tuple)
                and len(ft) == 3
                and ft[2] in (1, 3)
                and all(isinstance(n, int) and n > 0 for n in ft)
            ):
                cams[key] = (int(ft[0]), int(ft[1]), int(ft[2]))
            else:
                raise MappingError(
                    f"{name}.observation_features[{key!r}]: got {ft!r}, expected float (a joint) or "
                    "(height, width, channels) (a camera)"
                )
        bad = {k: v for k, v in act.items() if v is not float}
        if bad:
            raise MappingError(f"{name}.action_features: {bad!r} are not float; expected float per joint")
        return cls(tuple(state), cams, tuple(act), name)

    def dataset_features(self) -> dict[str, dict[str, Any]]:
        """The LeRobotDataset features of a recording (`lerobot-record`'s: the robot's own names)."""
        out: dict[str, dict[str, Any]] = {}
        for cam, (h, w, c) in self.cameras.items():
            if c == 3:
                out[f"{IMAGES_PREFIX}{cam}"] = {
                    "dtype": "video",
                    "shape": [h, w, 3],
                    "names": ["height", "width", "channels"],
                }
        if self.state:
            out[STATE_KEY] = {"dtype": "float32", "shape": [len(self.state)], "names": list(self.state)}
        out["action"] = {"dtype": "float32", "shape": [len(self.action)], "names": list(self.action)}
        return out

    def describe(self) -> str:
        cams = ", ".join(
            f"{k} {h}x{w}" + ("" if c == 3 else " depth") for k, (h, w, c) in self.cameras.items()
        )
        return (
            f"state {len(self.state)} {list(self.state)}, cameras [{cams or 'none'}], "
            f"action {len(self.action)} {list(self.action)}"
        )


@dataclass(frozen=True)
class PolicyFeatures:
    """What the served policy takes and gives (the server's metadata)."""

    cameras: dict[str, tuple[int, int]]  # "observation.images.<name>" -> trained (H, W)
    state_dim: int | None
    action_dim: int
    empty_cameras: int = 0  # how many of `cameras` may be left out

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> PolicyFeatures:
        try:
            obs = meta["observation"]
            shapes = meta["camera_shapes"]
            cams = {str(k): (int(shapes[k][-2]), int(shapes[k][-1])) for k in obs["cameras"]}
            state = obs["state_dim"]
            return cls(
                cams,
                None if state is None else int(state),
                int(meta["action_dim"]),
                int(obs["empty_cameras"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise MappingError(
                f"the server's metadata does not describe the policy's features ({type(e).__name__}: {e}); "
                "is it `smolvla serve`?"
            ) from None

    def describe(self) -> str:
        cams = ", ".join(f"{k.removeprefix(IMAGES_PREFIX)} {h}x{w}" for k, (h, w) in self.cameras.items())
        left = f" ({self.empty_cameras} may be left out)" if self.empty_cameras else ""
        return f"state {self.state_dim}, cameras [{cams}]{left}, action {self.action_dim}"


@dataclass(frozen=True)
class RobotMapping:
    """The checked mapping; `observation()` and `action_dict()` apply it."""

    robot: RobotFeatures
    policy: PolicyFeatures
    cameras: dict[str, str]  # robot camera -> policy key
    notes: tuple[str, ...] = field(default=())  # what a person should know (resizes, cameras left out)

    def observation(self, raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The policy's observation from the robot's: frames under the policy's keys, the state vector."""
        obs: dict[str, np.ndarray] = {}
        for cam, key in self.cameras.items():
            frame = raw.get(cam)
            if (
                not isinstance(frame, np.ndarray)
                or frame.dtype != np.uint8
                or frame.shape != self.robot.cameras[cam]
            ):
                got = (
                    f"{frame.dtype} {list(frame.shape)}"
                    if isinstance(frame, np.ndarray)
                    else type(frame).__name__
                )
                raise MappingError(
                    f"camera {cam!r}: got {got}, expected uint8 {list(self.robot.cameras[cam])} (its feature)"
                )
            obs[key] = frame
        if self.policy.state_dim is not None:
            obs[STATE_KEY] = self.state(raw)
        return obs

    def state(self, raw: Mapping[str, Any]) -> np.ndarray:
        vals = []
        for name in self.robot.state:
            v = raw.get(name)
            try:
                vals.append(float(v))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise MappingError(f"observation[{name!r}]: got {v!r:.60}, expected a number") from None
        st = np.asarray(vals, np.float32)
        if not np.all(np.isfinite(st)):
            raise MappingError(
                f"observation.state: {dict(zip(self.robot.state, st.tolist(), strict=True))}, expected finite"
            )
        return st

    def action_dict(self, action: np.ndarray) -> dict[str, float]:
        return {
            name: float(v) for name, v in zip(self.robot.action, np.asarray(action).reshape(-1), strict=True)
        }

    def action_vector(self, sent: Mapping[str, Any], fallback: np.ndarray) -> np.ndarray:
        """What a driver reports it sent, as a vector; joints it does not report keep `fallback`'s value."""
        return np.asarray(
            [float(sent.get(name, fallback[i])) for i, name in enumerate(self.robot.action)], np.float32
        )

    def joint_positions(self, raw: Mapping[str, Any]) -> np.ndarray:
        """Each action joint's measured value where the observation has it (NaN where it has not)."""
        out = np.full(len(self.robot.action), np.nan, np.float64)
        for i, name in enumerate(self.robot.action):
            v = raw.get(name)
            if isinstance(v, (int, float, np.floating, np.integer)) and np.isfinite(v):
                out[i] = float(v)
        return out


def parse_rename_map(value: str | Mapping[str, str] | None) -> dict[str, str]:
    """LeRobot's `--rename_map` as a dict: JSON text or a mapping of strings."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise MappingError(
                f"rename_map: {value!r} is not JSON ({e.msg}); expected e.g. "
                '\'{"observation.images.front": "observation.images.camera1"}\''
            ) from None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise MappingError(f"rename_map: got {value!r:.120}, expected a map of observation key to policy key")
    return dict(value)


def _aspect(h: int, w: int) -> float:
    return w / h


def check_mapping(
    robot: RobotFeatures, policy: PolicyFeatures, rename_map: Mapping[str, str]
) -> RobotMapping:
    """The mapping, or MappingError listing every mismatch, both sides and the fix."""
    problems: list[str] = []
    notes: list[str] = []
    robot_keys = {f"{IMAGES_PREFIX}{c}": c for c in robot.cameras}
    for k in rename_map:
        if k not in robot_keys:
            problems.append(
                f"--rename_map renames {k!r}, which is no camera of the robot (it has {sorted(robot_keys)})"
            )
    cameras: dict[str, str] = {}
    unmatched_robot: list[str] = []
    for key, cam in robot_keys.items():
        target = rename_map.get(key, key)
        if robot.cameras[cam][2] != 3:
            notes.append(f"camera {cam!r} is a depth map; the policy takes RGB only, so it is not sent")
            continue
        if target in policy.cameras:
            cameras[cam] = target
        else:
            unmatched_robot.append(cam)
            problems.append(
                f"robot camera {cam!r} ({target}) is no camera of the policy"
                + (" (renamed by --rename_map)" if key in rename_map else "")
            )
    fed = set(cameras.values())
    doubled = sorted(k for k in fed if list(cameras.values()).count(k) > 1)
    for k in doubled:
        problems.append(
            f"policy camera {k!r} would be fed by several robot cameras: "
            f"{[c for c in cameras if cameras[c] == k]}"
        )
    missing = [k for k in policy.cameras if k not in fed]
    if len(missing) > policy.empty_cameras:
        problems.append(
            f"policy camera(s) {missing} get no robot camera (at most {policy.empty_cameras} may be left out)"
        )
    elif missing:
        notes.append(f"policy camera(s) {missing} left out (the policy allows {policy.empty_cameras})")
    for cam, key in cameras.items():
        (h, w, _), (ph, pw) = robot.cameras[cam], policy.cameras[key]
        if (h, w) == (ph, pw):
            continue
        if abs(_aspect(h, w) - _aspect(ph, pw)) > ASPECT_TOLERANCE * _aspect(ph, pw):
            problems.append(
                f"camera {cam!r} gives {h}x{w} frames for {key}, trained on {ph}x{pw}: another aspect ratio, "
                f"so the policy would see the scene padded differently; set the camera to {ph}x{pw} "
                "(or the same aspect ratio) in --robot.cameras"
            )
        else:
            notes.append(
                f"camera {cam!r} gives {h}x{w} frames for {key}, trained on {ph}x{pw}: resized as in training"
            )
    if policy.state_dim is None:
        notes.append("the policy takes no state; the joint readings are not sent")
    elif policy.state_dim != len(robot.state):
        problems.append(
            f"state: the robot has {len(robot.state)} joint readings {list(robot.state)}, the policy takes "
            f"{policy.state_dim}"
        )
    if policy.action_dim != len(robot.action):
        problems.append(
            f"action: the policy gives {policy.action_dim} values, the robot takes {len(robot.action)} "
            f"{list(robot.action)}"
        )
    if problems:
        lines = [
            "the robot does not fit the policy:",
            f"  robot  ({robot.robot_type}): {robot.describe()}",
            f"  policy: {policy.describe()}",
            *(f"  - {p}" for p in problems),
        ]
        fix = suggest_rename_map(robot, policy, rename_map)
        if fix is not None:
            lines.append(
                f"fix the camera names with --rename_map='{json.dumps(fix)}' (check that each robot camera "
                "shows what its policy camera showed in training: the same viewpoint)"
            )
        raise MappingError("\n".join(lines))
    return RobotMapping(robot, policy, cameras, tuple(notes))


def suggest_rename_map(
    robot: RobotFeatures, policy: PolicyFeatures, rename_map: Mapping[str, str]
) -> dict[str, str] | None:
    """A rename map feeding the policy's unfed cameras from the robot's unmatched ones, in order; None
    when the camera names already fit (or no renaming can make them fit)."""
    out = {k: v for k, v in rename_map.items() if v in policy.cameras}
    fed = set(out.values())
    rgb = [c for c, s in robot.cameras.items() if s[2] == 3]
    unmatched = [
        c for c in rgb if f"{IMAGES_PREFIX}{c}" not in out and f"{IMAGES_PREFIX}{c}" not in policy.cameras
    ]
    fed |= {f"{IMAGES_PREFIX}{c}" for c in rgb if f"{IMAGES_PREFIX}{c}" in policy.cameras}
    free = [k for k in policy.cameras if k not in fed]
    if not unmatched or len(unmatched) > len(free):
        return None
    for cam, key in zip(unmatched, free, strict=False):
        out[f"{IMAGES_PREFIX}{cam}"] = key
    return out
