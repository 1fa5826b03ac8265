"""Records Meta-World's scripted experts into a LeRobotDataset v3.0.

    smolvla record metaworld --env.task=reach-v3,drawer-close-v3 --dataset.num_episodes=40 \\
        --env.image_size=128 --dataset.root=DIR

Worker processes (one per core) run the experts: each reads jobs `{task, seed}` as JSON lines on
stdin, renders the episode, writes its frames to a safetensors file and answers with a JSON line. The
main process encodes the successful episodes into the dataset. Nothing is pickled between processes.

Which episodes are kept is a pure function of (tasks, episodes, seed): for each task, seeds are tried
in increasing order from `seed` and the first `episodes` successful ones are written, task by task in
seed order. Evaluation should use seeds outside [seed, seed + tries) (see `EVAL_SEED_BASE`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any

import numpy as np

from smolvla.config import ACTION, OBS_STATE, TASK
from smolvla.envs.metaworld import (
    CAMERA,
    FPS,
    INSTRUCTIONS,
    EnvError,
    MetaWorldEnv,
    expert_action,
    tasks_for,
)
from smolvla.envs.workers import Worker, answer
from smolvla.io import write_json


@dataclass(frozen=True)
class RecordConfig:
    tasks: tuple[str, ...]
    episodes: int  # successful episodes per task
    output: Path
    image_size: int = 128
    seed: int = 0  # first seed tried for every task
    max_tries: float = 3.0  # give up on a task after episodes * max_tries seeds
    workers: int = field(default_factory=lambda: max(1, min(2, os.cpu_count() or 1)))
    max_episode_steps: int = 500
    video_codec: str | None = None  # None: the writer's default

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise EnvError(f"episodes: got {self.episodes}, expected a positive integer")
        if self.workers < 1:
            raise EnvError(f"workers: got {self.workers}, expected a positive integer")
        if not self.tasks:
            raise EnvError("tasks: got none, expected at least one Meta-World task")


def features(image_size: int) -> dict[str, dict[str, Any]]:
    """The dataset features of a Meta-World recording (LeRobot's naming)."""
    return {
        CAMERA: {
            "dtype": "video",
            "shape": [image_size, image_size, 3],
            "names": ["height", "width", "channels"],
        },
        OBS_STATE: {"dtype": "float32", "shape": [4], "names": ["hand_x", "hand_y", "hand_z", "gripper"]},
        ACTION: {"dtype": "float32", "shape": [4], "names": ["dx", "dy", "dz", "grip"]},
    }


# --------------------------------------------------------------------------------------------------
# Worker: runs episodes on request


def run_episode(env: MetaWorldEnv, seed: int) -> tuple[dict[str, np.ndarray], bool]:
    """The scripted expert from `seed` until success or the step limit. Frames are (observation, the
    action taken in it)."""
    obs, _ = env.reset(seed=seed)
    images, states, actions = [], [], []
    success = False
    while True:
        action = expert_action(env, obs)
        images.append(obs[CAMERA])
        states.append(obs[OBS_STATE])
        actions.append(action)
        obs, _, terminated, truncated, info = env.step(action)
        success = bool(info["success"])
        if terminated or truncated:
            break
    return {"images": np.stack(images), "state": np.stack(states), "action": np.stack(actions)}, success


def worker_main(image_size: int, max_episode_steps: int, out_dir: Path) -> None:
    from safetensors.numpy import save_file

    envs: dict[str, MetaWorldEnv] = {}
    for line in sys.stdin:
        job = json.loads(line)
        task, seed = job["task"], job["seed"]
        if task not in envs:
            envs[task] = MetaWorldEnv(task, image_size=image_size, max_episode_steps=max_episode_steps)
        t0 = time.perf_counter()
        frames, success = run_episode(envs[task], seed)
        result = {
            "task": task,
            "seed": seed,
            "success": success,
            "steps": len(frames["action"]),
            "seconds": time.perf_counter() - t0,
            "file": None,
        }
        if success:
            path = out_dir / f"{task}-{seed}.safetensors"
            save_file(frames, str(path.with_suffix(".tmp")))
            path.with_suffix(".tmp").replace(path)
            result["file"] = str(path)
        answer(result)


# --------------------------------------------------------------------------------------------------
# Main process: dispatch jobs, write episodes in a deterministic order


@dataclass
class _TaskState:
    next_seed: int
    max_seed: int
    in_flight: int = 0
    done: dict[int, dict] = field(default_factory=dict)  # seed -> answer
    written: int = 0


def record(cfg: RecordConfig, progress: bool = True) -> dict[str, Any]:
    """Records the dataset and returns a report (also written to `<output>/record_report.json`)."""
    from tqdm import tqdm

    from smolvla.data.writer import DatasetWriter

    kwargs = {"video_codec": cfg.video_codec} if cfg.video_codec else {}
    writer = DatasetWriter.create(
        cfg.output, fps=FPS, features=features(cfg.image_size), robot_type="sawyer", **kwargs
    )
    tries = int(np.ceil(cfg.episodes * cfg.max_tries))
    states = {t: _TaskState(next_seed=cfg.seed, max_seed=cfg.seed + tries) for t in cfg.tasks}
    answers: Queue = Queue()
    t_start = time.perf_counter()
    frames_rendered = 0
    render_seconds = 0.0
    report: dict[str, Any] = {"tasks": {}}
    with tempfile.TemporaryDirectory(prefix="smolvla-record-") as tmp:
        spec = {"image_size": cfg.image_size, "max_episode_steps": cfg.max_episode_steps, "out_dir": tmp}
        args = ["--worker", json.dumps(spec)]
        workers = [Worker("smolvla.envs.record", args, answers) for _ in range(cfg.workers)]
        pending = deque(cfg.tasks)  # tasks still recording, in order
        bar = tqdm(total=cfg.episodes * len(cfg.tasks), unit="ep", desc="recording", disable=not progress)
        try:
            while pending:
                _dispatch(cfg, workers, states, pending)
                worker, answer = answers.get()
                if answer is None:
                    raise RuntimeError(f"a recording worker exited with code {worker.proc.wait()}")
                worker.busy = False
                st = states[answer["task"]]
                st.in_flight -= 1
                st.done[answer["seed"]] = answer
                frames_rendered += answer["steps"]
                render_seconds += answer["seconds"]
                # Write every episode of the first pending task that is now determined.
                while pending and _flush(cfg, writer, states[pending[0]], pending[0], bar):
                    task = pending.popleft()
                    report["tasks"][task] = _task_report(states[task], cfg)
        finally:
            bar.close()
            for w in workers:
                w.close()
    writer.finalize()
    wall = time.perf_counter() - t_start
    report.update(
        {
            "output": str(cfg.output),
            "episodes": writer.num_episodes,
            "frames": writer.num_frames,
            "image_size": cfg.image_size,
            "fps": FPS,
            "seed": cfg.seed,
            "workers": cfg.workers,
            "wall_seconds": round(wall, 1),
            "frames_per_second_per_worker": round(frames_rendered / max(render_seconds, 1e-9), 1),
            "frames_per_second_total": round(frames_rendered / wall, 1),
        }
    )
    write_json(cfg.output / "record_report.json", report)
    return report


def _dispatch(
    cfg: RecordConfig, workers: list[Worker], states: dict[str, _TaskState], pending: deque
) -> None:
    """Gives idle workers the lowest untried seed of the earliest task that still needs episodes."""
    for w in workers:
        if w.busy:
            continue
        for task in pending:
            st = states[task]
            successes = sum(a["success"] for a in st.done.values())
            if successes + st.in_flight < cfg.episodes and st.next_seed < st.max_seed:
                w.send({"task": task, "seed": st.next_seed})
                w.busy = True
                st.next_seed += 1
                st.in_flight += 1
                break


def _flush(cfg: RecordConfig, writer: Any, st: _TaskState, task: str, bar: Any) -> bool:
    """Writes the task's next episodes if every lower seed has answered. True when the task is complete."""
    from safetensors.numpy import load_file

    for s in sorted(st.done):
        a = st.done[s]
        if a.get("written") or not a["success"]:
            continue
        if any(t not in st.done for t in range(cfg.seed, s)) or st.written >= cfg.episodes:
            break
        frames = load_file(a["file"])
        for i in range(len(frames["action"])):
            writer.add_frame(
                {
                    CAMERA: frames["images"][i],
                    OBS_STATE: frames["state"][i],
                    ACTION: frames["action"][i],
                    TASK: INSTRUCTIONS[task],
                }
            )
        writer.save_episode()
        Path(a["file"]).unlink()
        a["written"] = True
        st.written += 1
        bar.update(1)
    exhausted = st.next_seed >= st.max_seed and st.in_flight == 0
    if st.written < cfg.episodes and exhausted:
        tqdm_write = getattr(bar, "write", print)
        tqdm_write(
            f"warning: {task}: only {st.written} successful episodes in {st.max_seed - cfg.seed} seeds"
        )
    return st.written >= cfg.episodes or exhausted


def _task_report(st: _TaskState, cfg: RecordConfig) -> dict[str, Any]:
    tried = len(st.done)
    ok = sum(a["success"] for a in st.done.values())
    return {
        "episodes": st.written,
        "seeds_tried": tried,
        "expert_success_rate": round(ok / max(tried, 1), 3),
        "seeds": sorted(s for s, a in st.done.items() if a.get("written")),
    }


def _default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


@dataclass(frozen=True)
class RecordEnvConfig:
    # comma-separated Meta-World tasks, or a difficulty: easy|medium|hard|very_hard|all
    task: str | None = None
    image_size: int = 128  # rendered camera side in pixels
    max_episode_steps: int = 500  # an expert episode not done by then is dropped


@dataclass(frozen=True)
class RecordDatasetConfig:
    root: str | None = None  # the dataset folder to write
    num_episodes: int = 20  # successful episodes per task
    video_codec: str | None = None  # None: the writer's default


@dataclass(frozen=True)
class RecordPipelineConfig:
    """Record Meta-World's scripted experts into a LeRobotDataset (successful episodes only)."""

    env: RecordEnvConfig = field(default_factory=RecordEnvConfig)
    dataset: RecordDatasetConfig = field(default_factory=RecordDatasetConfig)
    seed: int = 0  # first seed tried for every task
    num_workers: int = field(default_factory=_default_workers)  # simulator processes

    def record_config(self) -> RecordConfig:
        if not self.env.task:
            raise EnvError(
                "--env.task is required: tasks (T1,T2) or a difficulty: easy|medium|hard|very_hard|all"
            )
        if not self.dataset.root:
            raise EnvError("--dataset.root is required: the dataset folder to write")
        return RecordConfig(
            tasks=tuple(tasks_for(self.env.task)),
            episodes=self.dataset.num_episodes,
            output=Path(self.dataset.root),
            image_size=self.env.image_size,
            seed=self.seed,
            workers=self.num_workers,
            max_episode_steps=self.env.max_episode_steps,
            video_codec=self.dataset.video_codec,
        )


def run_record(cfg: RecordPipelineConfig) -> dict[str, Any]:
    """Records and prints the report (without the per-task details) as one JSON line."""
    report = record(cfg.record_config())
    print(json.dumps({k: v for k, v in report.items() if k != "tasks"}))
    return report


if __name__ == "__main__":  # a recording worker, started by record()
    if sys.argv[1:2] != ["--worker"] or len(sys.argv) != 3:
        sys.exit(
            "usage: python -m smolvla.envs.record --worker SPEC (record()'s workers); use `smolvla record`"
        )
    _spec = json.loads(sys.argv[2])
    worker_main(_spec["image_size"], _spec["max_episode_steps"], Path(_spec["out_dir"]))
