"""`smolvla bench metaworld_fps`: frames per second of a Meta-World env with the scripted expert
(expert + step + render per frame).

    LP_NUM_THREADS=1 smolvla bench metaworld_fps --sizes 224 128 64

All sizes run in one process (one env each, built in turn). Prints one JSON line per size: frames/s
over `--episodes` episodes of `--steps` steps each (resets excluded), median and range over
`--repeats` runs (other work on the machine shows up as low outliers), the mean reset time (it renders
the first frame), and the env construction time. LP_NUM_THREADS=1 is llvmpipe's setting for one
render thread: as fast as more, so one process per core scales.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass

from smolvla.envs import MetaWorldEnv, expert_action  # sets MUJOCO_GL=egl unless set


def measure(task: str, size: int, episodes: int, steps: int, repeats: int) -> dict:
    t0 = time.perf_counter()
    env = MetaWorldEnv(task, image_size=size, max_episode_steps=steps, terminate_on_success=False)
    build = time.perf_counter() - t0
    obs, _ = env.reset(seed=10_000)  # warm-up: the GL context is made at the first render
    for _ in range(min(steps, 10)):
        obs, *_ = env.step(expert_action(env, obs))
    rates, resets = [], []
    for r in range(repeats):
        frames, stepping = 0, 0.0
        for seed in range(r * episodes, (r + 1) * episodes):
            t0 = time.perf_counter()
            obs, _ = env.reset(seed=seed)
            resets.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            done = False
            while not done:
                obs, _, terminated, truncated, _ = env.step(expert_action(env, obs))
                frames += 1
                done = terminated or truncated
            stepping += time.perf_counter() - t0
        rates.append(frames / stepping)
    env.close()
    return {
        "task": task,
        "image_size": size,
        "frames_per_run": episodes * steps,
        "frames_per_s": round(statistics.median(rates), 1),
        "frames_per_s_range": [round(min(rates), 1), round(max(rates), 1)],
        "reset_s": round(statistics.median(resets), 4),
        "build_s": round(build, 3),
        "LP_NUM_THREADS": os.environ.get("LP_NUM_THREADS"),
        "MUJOCO_GL": os.environ.get("MUJOCO_GL"),
    }


@dataclass(frozen=True)
class BenchMetaWorldConfig:
    """Frames per second of a Meta-World env with the scripted expert, per image size."""

    task: str = "drawer-close-v3"  # the Meta-World task
    sizes: tuple[int, ...] = (224, 128, 64)  # rendered image sides in pixels, one line each
    episodes: int = 5  # episodes per timed run
    steps: int = 100  # steps per episode
    repeats: int = 3  # timed runs (median and range reported)


def run(args: BenchMetaWorldConfig) -> None:
    """One JSON line per image size."""
    for size in args.sizes:
        print(json.dumps(measure(args.task, size, args.episodes, args.steps, args.repeats)), flush=True)
