"""Meta-World (v3) as SmolVLA's paper uses it: one task per env, the `corner2` camera, robot state `obs[:4]`.

    env = MetaWorldEnv("drawer-close-v3", image_size=224)
    obs, info = env.reset(seed=0)
    while True:
        obs, reward, terminated, truncated, info = env.step(expert_action(env, obs))
        if terminated or truncated:
            break

Observations use LeRobot's keys: `observation.images.camera1` (uint8, H x W x 3),
`observation.state` (float32, 4: hand xyz and gripper opening) and `observation.environment_state`
(the simulator's full 39-float observation, privileged: for the scripted expert, never for a policy).
`env.task` is the English instruction.

Seeds and initial states. Each task randomizes its object and goal positions at reset from a
"random vector" drawn uniformly from the task's reset box. `reset(seed=s)` draws it from numpy's PCG64
generator seeded with `s` (gymnasium's `seeding.np_random(s)`), re-seeded at every seeded reset; tasks
that keep the object and goal apart redraw from the same stream. So the initial state is a pure
function of (task, seed): it does not depend on the episode order, the process, the image size or the
global numpy RNG. Distinct seeds give independent continuous draws, so training on seeds [0, N) and
evaluating on seeds [N, N + M) (any disjoint sets) guarantees initial states not seen in training. The
hand starts from the same pose: `observation.state` at reset is identical across seeds, except in
door-lock and door-unlock (hand xyz spread up to 4 cm over seeds) and the four handle tasks (< 6 mm).
`reset()` without a seed continues the generator (gymnasium's convention; the first unseeded reset
draws entropy from the OS): pass a seed to every reset when reproducibility matters.

Rendering. `MUJOCO_GL` defaults to `egl` (headless). Multisampling, shadows and reflections are off:
4-10x faster on a software renderer, images almost the same. With software GL set `LP_NUM_THREADS=1`
and run one env per core: one thread per process renders as fast as several.
"""

from __future__ import annotations

import atexit
import difflib
import os
import sys
import warnings
import weakref
from typing import Any, ClassVar

import numpy as np

from smolvla.config import OBS_ENV_STATE, OBS_IMAGES, OBS_STATE
from smolvla.errors import SmolVLAError


class EnvError(SmolVLAError, ValueError):
    """A task, difficulty or environment setting that does not exist."""


CAMERA = f"{OBS_IMAGES}.camera1"
FPS = 80  # LeRobot's Meta-World env runs at 80 fps
EVAL_SEED_BASE = 1_000_000  # evaluation seeds start here, far from any recording's seeds
STATE = OBS_STATE
ENV_STATE = OBS_ENV_STATE

# SmolVLA's Meta-World setup (as in LeRobot): the corner2 camera moved here; it renders upside down.
CAMERA_NAME = "corner2"
CAMERA_POS = (0.75, 0.075, 0.7)

# One instruction per task: imperative, lowercase, naming what is visible from corner2 (colors help a
# small policy ground the words), accurate to the task's success test.
INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "put the ring with the green handle onto the red peg",
    "basketball-v3": "dunk the orange ball into the basketball hoop",
    "bin-picking-v3": "move the green cube from the red bin into the blue bin",
    "box-close-v3": "put the lid on the wooden box",
    "button-press-topdown-v3": "press the red button down from above",
    "button-press-topdown-wall-v3": "press the red button down from above, past the wall",
    "button-press-v3": "push the red button in from the front",
    "button-press-wall-v3": "push the red button in from the front, past the wall",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the white mug away from the coffee machine",
    "coffee-push-v3": "push the white mug under the coffee machine",
    "dial-turn-v3": "turn the black dial",
    "disassemble-v3": "lift the ring with the green handle off the red peg",
    "door-close-v3": "swing the door closed",
    "door-lock-v3": "turn the lock on the door to lock it",
    "door-open-v3": "pull the door open",
    "door-unlock-v3": "turn the lock on the door to unlock it",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open",
    "faucet-close-v3": "turn the faucet handle to close the faucet",
    "faucet-open-v3": "turn the faucet handle to open the faucet",
    "hammer-v3": "hammer the nail into the wooden box",
    "hand-insert-v3": "pick up the brown block and put it into the hole at the blue point",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "peg-insert-side-v3": "insert the green peg into the hole in the side of the box",
    "peg-unplug-side-v3": "pull the peg out of the side of the white box",
    "pick-out-of-hole-v3": "lift the red puck out of the hole up to the blue goal point",
    "pick-place-v3": "pick up the red puck and place it at the blue goal point",
    "pick-place-wall-v3": "pick up the red puck and carry it over the wall to the blue goal point",
    "plate-slide-back-side-v3": "slide the black plate sideways out of the white cabinet",
    "plate-slide-back-v3": "slide the black plate back out of the white cabinet",
    "plate-slide-side-v3": "slide the black plate sideways into the white cabinet",
    "plate-slide-v3": "slide the black plate into the white cabinet",
    "push-back-v3": "pull the brown block back to the green goal point",
    "push-v3": "push the red puck to the green goal point",
    "push-wall-v3": "push the red puck around the wall to the green goal point",
    "reach-v3": "reach the red goal point",
    "reach-wall-v3": "reach over the wall to the red goal point",
    "shelf-place-v3": "place the blue block on the shelf",
    "soccer-v3": "kick the soccer ball into the net",
    "stick-pull-v3": "pull the green thermos with the blue stick",
    "stick-push-v3": "push the green thermos with the blue stick",
    "sweep-into-v3": "sweep the brown block into the hole at the blue point",
    "sweep-v3": "sweep the brown block off the side of the table",
    "window-close-v3": "slide the window closed",
    "window-open-v3": "slide the window open",
}

TASKS: tuple[str, ...] = tuple(sorted(INSTRUCTIONS))


def _v3(names: str) -> list[str]:
    return [f"{n}-v3" for n in names.split()]


# The difficulty split of SmolVLA's Meta-World results (28 / 11 / 6 / 5), in the paper's order.
DIFFICULTY: dict[str, list[str]] = {
    "easy": _v3(
        "button-press button-press-topdown button-press-topdown-wall button-press-wall coffee-button "
        "dial-turn door-close door-lock door-open door-unlock drawer-close drawer-open faucet-close "
        "faucet-open handle-press handle-press-side handle-pull handle-pull-side lever-pull plate-slide "
        "plate-slide-back plate-slide-back-side plate-slide-side reach reach-wall window-close "
        "window-open peg-unplug-side"
    ),
    "medium": _v3(
        "basketball bin-picking box-close coffee-pull coffee-push hammer peg-insert-side push-wall "
        "soccer sweep sweep-into"
    ),
    "hard": _v3("assembly hand-insert pick-out-of-hole pick-place push push-back"),
    "very_hard": _v3("shelf-place disassemble stick-pull stick-push pick-place-wall"),
}


def _unknown(what: str, name: object, valid: list[str], expected: str) -> EnvError:
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.0)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return EnvError(f"{what}: got {name!r}, expected {expected}{hint}")


def tasks_for(spec: str) -> list[str]:
    """Task names for a spec: "all", a bucket ("easy", "medium", "hard", "very_hard"), or a
    comma-separated list of tasks ("reach-v3,drawer-close-v3") and buckets; in order, without repeats."""
    if not isinstance(spec, str) or not spec.strip():
        raise EnvError(f"tasks: got {spec!r}, expected 'all', a bucket {list(DIFFICULTY)} or task names")
    out: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if part == "all":
            names = list(TASKS)
        elif part in DIFFICULTY:
            names = DIFFICULTY[part]
        elif part in INSTRUCTIONS:
            names = [part]
        else:
            valid = ["all", *DIFFICULTY, *TASKS]
            raise _unknown("tasks", part, valid, "a Meta-World v3 task, a bucket or 'all'")
        out.extend(n for n in names if n not in out)
    return out


def _check_task(task: str) -> str:
    if not isinstance(task, str) or task not in INSTRUCTIONS:
        raise _unknown("task", task, list(TASKS), "a Meta-World v3 task name")
    return task


def _metaworld() -> Any:
    # EGL renders offscreen without a display; GLFW (MuJoCo's default) fails headless. The backend is
    # fixed when mujoco is first imported, so this only applies if nothing imported it yet.
    if "mujoco" not in sys.modules:
        os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import metaworld.env_dict
        import metaworld.policies
    except ImportError as e:
        raise ImportError(
            f"Meta-World is not installed ({e}); `pip install metaworld==3.1.1 packaging`"
        ) from e
    return metaworld


# Envs still open at exit. MuJoCo terminates the EGL display at exit (an atexit hook registered when
# the first GL context is made); a renderer freed after that raises EGLError noise. Ours, registered
# after the first render, runs first (atexit is last in, first out) and closes what is left.
_OPEN: weakref.WeakSet[MetaWorldEnv] = weakref.WeakSet()
_close_at_exit_registered = False


def _close_open_envs() -> None:
    for env in list(_OPEN):
        env.close()


class MetaWorldEnv:
    """One Meta-World v3 task with a gymnasium-style API (`reset`, `step`, `render`, `close`).

    `image_size`: side of the square camera image in pixels. `max_episode_steps`: the episode is
    truncated after this many steps (Meta-World's 500 by default). `terminate_on_success`: end the
    episode (`terminated=True`) at the first successful step, as LeRobot's evaluation does; with False
    the episode runs until truncation and `info["success"]` reports each step.
    """

    # One step is 5 physics steps of 2.5 ms: 80 steps per simulated second.
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 80}
    render_mode = "rgb_array"

    def __init__(
        self,
        task: str,
        image_size: int = 480,
        max_episode_steps: int | None = None,
        terminate_on_success: bool = True,
    ) -> None:
        self.task_name = _check_task(task)
        self.task = INSTRUCTIONS[task]
        if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 1:
            raise EnvError(f"image_size: got {image_size!r}, expected a positive integer (pixels)")
        if max_episode_steps is not None and (
            not isinstance(max_episode_steps, (int, np.integer))
            or isinstance(max_episode_steps, bool)
            or max_episode_steps < 1
        ):
            raise EnvError(f"max_episode_steps: got {max_episode_steps!r}, expected a positive integer")
        self.image_size = int(image_size)
        self.terminate_on_success = bool(terminate_on_success)

        mw = _metaworld()
        import gymnasium.spaces as spaces

        env = mw.env_dict.ALL_V3_ENVIRONMENTS[task](
            render_mode="rgb_array", camera_name=CAMERA_NAME, width=self.image_size, height=self.image_size
        )
        # What MT1's goal-observable classes set, without their frozen random vector: the goal is part
        # of the 39-d state (the scripted experts need it), and each reset draws object and goal from
        # the env's own seeded generator (see the module docstring).
        env._partially_observable = False
        env.__dict__.pop("sawyer_observation_space", None)  # cached with the goal zeroed out
        env._set_task_called = True
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        self.max_episode_steps = int(max_episode_steps or env.max_path_length)
        # Meta-World raises past its own max_path_length; ours is the one limit.
        env.max_path_length = self.max_episode_steps

        model = env.model
        model.cam_pos[model.camera(CAMERA_NAME).id] = CAMERA_POS
        model.vis.quality.offsamples = 0
        model.light_castshadow[:] = 0
        model.mat_reflectance[:] = 0
        self._env = env
        self._expert = mw.policies.ENV_POLICY_MAP[task]()

        side = self.image_size
        self.action_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.observation_space = spaces.Dict(
            {
                CAMERA: spaces.Box(0, 255, (side, side, 3), np.uint8),
                STATE: spaces.Box(-np.inf, np.inf, (4,), np.float32),
                ENV_STATE: spaces.Box(-np.inf, np.inf, (39,), np.float64),
            }
        )
        self._steps = 0
        self._done: str | None = "reset() has not been called"
        self._closed = False
        self._image: np.ndarray | None = None
        _OPEN.add(self)

    @property
    def unwrapped(self) -> Any:
        """The Meta-World env underneath (its `render()` gives the raw, unflipped image)."""
        return self._env

    @property
    def elapsed_steps(self) -> int:
        return self._steps

    def _observe(self, state: np.ndarray) -> dict[str, np.ndarray]:
        global _close_at_exit_registered
        # corner2 comes out rotated by 180 degrees; copy so the array is contiguous (torch.from_numpy).
        self._image = np.flip(self._env.render(), (0, 1)).copy()
        if not _close_at_exit_registered:
            atexit.register(_close_open_envs)
            _close_at_exit_registered = True
        return {
            CAMERA: self._image,
            STATE: state[:4].astype(np.float32),
            # float64 as the simulator gives it, so the expert acts exactly as on the raw env.
            ENV_STATE: np.array(state, dtype=np.float64),
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Starts an episode; `seed` fixes the initial object and goal positions (see the module doc)."""
        if self._closed:
            raise RuntimeError(f"reset: {self!r} is closed")
        if options:
            raise EnvError(f"options: got {options!r}, expected None (no reset options)")
        if seed is not None:
            if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
                raise EnvError(f"seed: got {seed!r}, expected a non-negative integer or None")
            self._env.seed(int(seed))
        state, _ = self._env.reset()
        self._steps = 0
        self._done = None
        return self._observe(state), {"success": False}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """One control step (12.5 ms simulated). `action`: 4 floats in [-1, 1], hand xyz delta and
        gripper effort; values outside are clipped, as Meta-World itself does."""
        if self._done is not None:
            raise RuntimeError(f"step: {self._done}; call reset() first")
        try:
            a = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise EnvError(f"action: got {type(action).__name__}, expected 4 floats ({e})") from e
        if a.shape != (4,):
            raise EnvError(
                f"action: got shape {a.shape}, expected (4,) (hand dx, dy, dz, gripper effort); "
                "take one action out of a batch or chunk"
            )
        if not np.all(np.isfinite(a)):
            raise EnvError(f"action: got {a.tolist()}, expected finite values")
        state, reward, _, _, info = self._env.step(np.clip(a, -1.0, 1.0).astype(np.float32))
        self._steps += 1
        success = bool(info["success"])
        info = {**info, "success": success}
        terminated = success and self.terminate_on_success
        truncated = self._steps >= self.max_episode_steps
        if terminated:
            self._done = f"the episode ended at step {self._steps} (success)"
        elif truncated:
            self._done = f"the episode ended at step {self._steps} (max_episode_steps)"
        return self._observe(state), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray:
        """The current camera image (uint8, H x W x 3), as in the last observation."""
        if self._image is None:
            raise RuntimeError("render: no image yet; call reset() first")
        return self._image

    def close(self) -> None:
        """Frees the renderer; the env cannot be used after. Closing twice is fine."""
        if not self._closed:
            self._closed = True
            self._done = "the env is closed"
            _OPEN.discard(self)
            self._env.close()

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"MetaWorldEnv({self.task_name!r}, image_size={self.image_size}, "
            f"max_episode_steps={self.max_episode_steps})"
        )


def expert_action(env: MetaWorldEnv, obs: dict[str, np.ndarray]) -> np.ndarray:
    """Meta-World's scripted expert for `env`'s task: float32 (4,), clipped to [-1, 1] (as the env
    applies it). Reads `observation.environment_state`, the privileged state."""
    if not isinstance(env, MetaWorldEnv):
        raise TypeError(f"env: got {type(env).__name__}, expected a MetaWorldEnv")
    state = obs.get(ENV_STATE) if isinstance(obs, dict) else None
    if state is None or np.shape(state) != (39,):
        got = "no such key" if state is None else f"shape {np.shape(state)}"
        raise EnvError(f"obs[{ENV_STATE!r}]: {got}, expected the (39,) state from MetaWorldEnv")
    with warnings.catch_warnings():
        # The experts' gains exceed 1 on purpose and each call warns about it; the env clips.
        warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")
        action = env._expert.get_action(np.asarray(state, dtype=np.float64))
    return np.clip(action, -1.0, 1.0).astype(np.float32)
