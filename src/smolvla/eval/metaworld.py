"""Evaluates a policy on Meta-World, SmolVLA's simulation benchmark: success per task and per
difficulty bucket, a bar chart, and a video of one episode per task.

    smolvla eval --policy.path=DIR --env.type=metaworld --env.task=reach-v3,drawer-close-v3 \\
        --eval.n_episodes=10 --output_dir=outputs/eval/run1

How it runs. Worker processes (one per core) each load the policy and its processors once and keep
one MetaWorldEnv per task; the main process sends them episodes `{task, seed}` as JSON lines on stdin
and reads one JSON line back per episode, as the recorder does. Nothing is pickled.

The policy is driven as a user drives it: `policy.reset()` at each episode start, then at every step
the raw observation (uint8 camera frame, float32 state, the instruction as `task`) goes through the
preprocessor, `policy.select_action` and the postprocessor, and the action goes to `env.step`. The
privileged simulator state never reaches the policy. Where actions come from is an `Actor`: the policy
(`PolicyActor`) or Meta-World's scripted expert (`ExpertActor`, `policy_type="expert"`), which
reads the privileged state: it checks that the harness counts successes right and is an upper bound.

Seeds. Episode i of every task starts from seed `seed + i` (default `EVAL_SEED_BASE`: initial states
a recording never used), and torch is seeded with the same number before it, so an episode is a pure
function of (policy, settings, task, seed): the same whichever worker runs it, run after run.

`n_action_steps` (actions executed per predicted chunk) changes success rates a lot (lerobot#4614):
the report records the value used. An episode ends at the first success or after `max_episode_steps`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any, Protocol

import numpy as np

from smolvla.config import OBS_STATE, TASK
from smolvla.envs.metaworld import (
    CAMERA,
    DIFFICULTY,
    EVAL_SEED_BASE,
    FPS,
    INSTRUCTIONS,
    STATE,
    MetaWorldEnv,
    _check_task,
    expert_action,
    tasks_for,
)
from smolvla.envs.workers import Worker, answer
from smolvla.errors import MissingFileError, SmolVLAError
from smolvla.io import write_json

# The scripted experts, measured on 20 evaluation seeds x 50 tasks: 98.2 % succeed within Meta-World's
# 500 steps, on average in 66 steps (easy), 86 (medium), 94 (hard), 98 (very hard), 95 % of their
# successes within 126 steps. The tail decides the limit: within 300 steps 97.6 % succeed (push-back
# only 70 %: its expert stalls, then recovers in up to 352 steps); within 400 all 98.2 %. 400 is also
# LeRobot's Meta-World `episode_length`, so rates compare with its evaluations; a failing episode, the
# costly case, still stops 20 % short of 500.
MAX_EPISODE_STEPS = 400
POLICY_TYPES = ("smolvla", "expert")
EXPERT_IMAGE_SIZE = 128  # the expert needs no images; this size is for its videos (the recorder's default)
VIDEO_MIN_SIDE = 256
_CHECKPOINT_FILES = ["*.json", "*.safetensors", "vlm/*", "tokenizer/*"]  # a hub download: no videos etc.
_BUCKET = {task: bucket for bucket, names in DIFFICULTY.items() for task in names}


class EvalError(SmolVLAError, ValueError, RuntimeError):
    """A bad evaluation setting, or a worker that failed (its error is in the message) or exited."""


def _positive(name: str, v: Any, optional: bool = False) -> None:
    if optional and v is None:
        return
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        also = " or None (the checkpoint's)" if optional else ""
        raise EvalError(f"{name}: got {v!r}, expected a positive integer{also}")


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how. `tasks`: task names (or a spec string for `tasks_for`: "easy",
    "reach-v3,drawer-close-v3"). `n_action_steps`, `num_steps`: override the checkpoint's actions per
    chunk and denoising steps (None: the checkpoint's). `image_size`: rendered side in pixels (None: the
    policy's camera size). `policy_type="expert"` evaluates Meta-World's scripted expert instead (no
    checkpoint)."""

    policy_path: str | Path | None
    tasks: tuple[str, ...]
    output_dir: Path
    n_episodes: int = 10  # per task
    seed: int = EVAL_SEED_BASE  # episode i of each task uses seed + i
    n_action_steps: int | None = None
    num_steps: int | None = None
    image_size: int | None = None
    max_episode_steps: int = MAX_EPISODE_STEPS
    workers: int = field(default_factory=lambda: max(1, min(2, os.cpu_count() or 1)))
    videos: bool = True  # one MP4 per task, of its first episode
    device: str = "cpu"
    policy_type: str = "smolvla"
    inference_mode: str | None = None  # fp32 | bf16 | int8 | auto (None: torch's plain policy, else fp32)
    backend: str = "torch"  # torch | onnxruntime | openvino | auto (smolvla.runtime.load_policy)

    def __post_init__(self) -> None:
        tasks = self.tasks
        if isinstance(tasks, str):
            tasks = tasks_for(tasks)
        if not isinstance(tasks, (list, tuple)) or not tasks:
            raise EvalError(f"tasks: got {tasks!r}, expected at least one Meta-World task name")
        for t in tasks:
            _check_task(t)
        repeated = sorted({t for t in tasks if tasks.count(t) > 1})
        if repeated:
            raise EvalError(f"tasks: {repeated} given more than once, expected each task once")
        object.__setattr__(self, "tasks", tuple(tasks))
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        if self.policy_type not in POLICY_TYPES:
            raise EvalError(f"policy_type: got {self.policy_type!r}, expected one of {list(POLICY_TYPES)}")
        if self.policy_type == "smolvla" and self.policy_path is None:
            raise EvalError("policy_path: got None, expected a checkpoint folder or hub repo id")
        if self.policy_type == "expert" and self.policy_path is not None:
            raise EvalError(
                f"policy_path: got {self.policy_path!r} with policy_type='expert', expected None "
                "(the scripted expert has no checkpoint)"
            )
        from smolvla.runtime.select import check_choice

        check_choice(self.backend, self.inference_mode)  # raises, naming the flag and the choices
        _positive("n_episodes", self.n_episodes)
        _positive("max_episode_steps", self.max_episode_steps)
        _positive("workers", self.workers)
        _positive("n_action_steps", self.n_action_steps, optional=True)
        _positive("num_steps", self.num_steps, optional=True)
        _positive("image_size", self.image_size, optional=True)
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or self.seed < 0:
            raise EvalError(f"seed: got {self.seed!r}, expected a non-negative integer")

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n_episodes)]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["policy_path"] = None if self.policy_path is None else str(self.policy_path)
        d["output_dir"] = str(self.output_dir)
        d["tasks"] = list(self.tasks)
        return d


# --------------------------------------------------------------------------------------------------
# What the workers run: a spec checked in the main process, actors, one episode


def _policy_spec(cfg: EvalConfig) -> dict[str, Any]:
    """Everything a worker needs, as JSON. Checks the checkpoint here, before any worker starts, so bad
    input fails once, with its field named."""
    spec: dict[str, Any] = {
        "policy_type": cfg.policy_type,
        "max_episode_steps": cfg.max_episode_steps,
        "device": cfg.device,
        "inference_mode": cfg.inference_mode,
        "backend": cfg.backend,
    }
    if cfg.policy_type == "expert":
        return {**spec, "image_size": cfg.image_size or EXPERT_IMAGE_SIZE}

    from smolvla.checkpoint import CONFIG_FILE
    from smolvla.config import SmolVLAConfig
    from smolvla.hub import resolve_dir
    from smolvla.processing.pipeline import POSTPROCESSOR_FILE, PREPROCESSOR_FILE

    folder = resolve_dir(str(cfg.policy_path), allow_patterns=_CHECKPOINT_FILES)
    if not (folder / CONFIG_FILE).is_file():
        raise MissingFileError(f"policy_path: {folder} has no {CONFIG_FILE}, expected a SmolVLA checkpoint")
    missing = [f for f in (PREPROCESSOR_FILE, POSTPROCESSOR_FILE) if not (folder / f).is_file()]
    if missing:
        raise MissingFileError(
            f"policy_path: {folder} has no {' or '.join(missing)}; the evaluation feeds raw observations "
            "through the checkpoint's processors. Create them with the training dataset's stats: "
            "`pre, post = make_pre_post_processors(policy.config, dataset_stats=stats); "
            f"pre.save('{folder}'); post.save('{folder}')`"
        )
    overrides = {k: v for k in ("n_action_steps", "num_steps") if (v := getattr(cfg, k)) is not None}
    config = SmolVLAConfig.load(folder / CONFIG_FILE)
    if overrides:
        config = config.override(**overrides)  # raises on n_action_steps > chunk_size, naming both
    for key, feat, what in (
        (OBS_STATE, config.state_feature, "input_features"),
        ("action", config.action_feature, "output_features"),
    ):
        shape = None if feat is None else tuple(feat.shape)
        if shape != (4,):
            raise EvalError(
                f"{what}[{key!r}]: got shape {shape}, expected (4,): Meta-World's state is hand xyz + "
                "gripper opening and its action hand dx, dy, dz + gripper effort"
            )
    cams = list(config.image_features)
    if len(cams) == 1:
        camera = cams[0]  # by position: the env's only camera feeds the policy's only camera
    elif CAMERA in cams and len(cams) - 1 <= config.empty_cameras:
        camera = CAMERA  # the others are empty cameras (all -1) that the policy masks out
    else:
        raise EvalError(
            f"input_features: the policy expects cameras {cams} (empty_cameras={config.empty_cameras}), "
            f"the Meta-World env gives one, {CAMERA!r}; evaluate a policy trained on one camera"
        )
    image_size = cfg.image_size
    if image_size is None:
        _, h, w = config.image_features[camera].shape
        if h != w:
            raise EvalError(
                f"image_size: the policy's camera {camera!r} is {h}x{w} and Meta-World renders square "
                "images; pass image_size (--env.image_size=N)"
            )
        image_size = h
    backend, mode = cfg.backend, cfg.inference_mode
    if backend == "auto" or mode == "auto":  # measured here once, so every worker runs the same choice
        from smolvla.runtime.select import measure

        choice = measure(folder, backend, mode)["choice"]
        backend, mode = choice["backend"], choice["precision"]
    load_path = str(folder)
    if backend != "torch":
        if len(cams) > 1:
            raise EvalError(
                f"--policy.backend={backend}: an export takes a fixed camera set, here every camera of "
                f"{cams}, and Meta-World gives one ({camera!r}, the others empty); evaluate this policy "
                "with --policy.backend=torch"
            )
        from smolvla.runtime.select import ensure_export

        load_path = str(ensure_export(folder))  # once, here: the workers load what it wrote
    return {
        **spec,
        "backend": backend,
        "inference_mode": mode,
        "load_path": load_path,
        "path": str(folder),
        "camera": camera,
        "image_size": image_size,
        "n_action_steps": config.n_action_steps,
        "num_steps": config.num_steps,
        "chunk_size": config.chunk_size,
        "overrides": overrides,
    }


class Actor(Protocol):
    """Where actions come from. `reset(seed)` at each episode start, then one action (4,) per step."""

    def reset(self, seed: int) -> None: ...

    def __call__(self, env: MetaWorldEnv, obs: dict[str, np.ndarray]) -> np.ndarray: ...


class PolicyActor:
    """A SmolVLA policy (`smolvla.runtime.Predictor`: torch with its processors, or an export on ONNX
    Runtime / OpenVINO), driven as a user drives it."""

    def __init__(self, predictor: Any, camera: str) -> None:
        self.predictor, self.camera = predictor, camera

    @classmethod
    def load(cls, spec: dict[str, Any]) -> PolicyActor:
        from smolvla.runtime.select import load_policy

        predictor = load_policy(
            spec.get("load_path", spec["path"]),
            spec.get("backend", "torch"),
            spec.get("inference_mode"),
            device=spec["device"],
            **spec["overrides"],
        )
        return cls(predictor, spec["camera"])

    def reset(self, seed: int) -> None:
        self.predictor.reset(seed)  # the flow-matching noise comes from the seed: episodes replay exactly

    def __call__(self, env: MetaWorldEnv, obs: dict[str, np.ndarray]) -> np.ndarray:
        observation = {self.camera: obs[CAMERA], OBS_STATE: obs[STATE], TASK: env.task}
        return self.predictor.select_action(observation)


class ExpertActor:
    """Meta-World's scripted expert (reads the privileged state)."""

    def reset(self, seed: int) -> None:
        pass

    def __call__(self, env: MetaWorldEnv, obs: dict[str, np.ndarray]) -> np.ndarray:
        return expert_action(env, obs)


def rollout(
    env: MetaWorldEnv, actor: Actor, seed: int, frames: list[np.ndarray] | None = None
) -> dict[str, Any]:
    """One episode from `seed` until success or the env's step limit: success, steps, the sum and max
    of Meta-World's dense reward (what LeRobot reports too), seconds. Appends the camera frames
    (including the last observation) to `frames` when given."""
    t0 = time.perf_counter()
    obs, _ = env.reset(seed=seed)
    actor.reset(seed)
    act_seconds, rewards = 0.0, []
    while True:
        if frames is not None:
            frames.append(obs[CAMERA])
        t = time.perf_counter()
        action = actor(env, obs)
        act_seconds += time.perf_counter() - t
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        if terminated or truncated:
            break
    if frames is not None:
        frames.append(obs[CAMERA])
    return {
        "success": bool(info["success"]),
        "steps": env.elapsed_steps,
        "sum_reward": float(np.sum(rewards)),
        "max_reward": float(np.max(rewards)),
        "seconds": time.perf_counter() - t0,
        "act_seconds": act_seconds,
    }


# --------------------------------------------------------------------------------------------------
# Videos


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw: Any, text: str, font: Any, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines or [""]


def caption_frames(
    frames: list[np.ndarray], instruction: str, success: bool, steps: int, hold: int = FPS // 2
) -> list[np.ndarray]:
    """The frames upscaled (nearest) to at least 256 px, the instruction above, the step and outcome
    below (green for success, red for failure); the last frame held for `hold` more frames."""
    from PIL import Image, ImageDraw

    h, w = frames[0].shape[:2]
    scale = max(1, math.ceil(VIDEO_MIN_SIDE / min(h, w)))
    width = w * scale + (w * scale) % 2  # even sizes: yuv420p halves them
    pad = 6
    font = _font(max(12, width // 28))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(font.getbbox("Ag")[3]) + 4
    lines = _wrap(probe, instruction, font, width - 2 * pad)
    top = pad * 2 + line_h * len(lines)
    bottom = pad * 2 + line_h
    height = top + h * scale + bottom
    height += height % 2
    header = Image.new("RGB", (width, top), (20, 20, 20))
    d = ImageDraw.Draw(header)
    for i, line in enumerate(lines):
        d.text((pad, pad + i * line_h), line, fill=(255, 255, 255), font=font)
    outcome = f"success at step {steps}" if success else f"failure: no success in {steps} steps"
    color = (20, 110, 40) if success else (150, 30, 30)
    out = []
    for i, frame in enumerate(frames):
        canvas = Image.new("RGB", (width, height), (0, 0, 0))
        canvas.paste(header, (0, 0))
        big = np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)
        canvas.paste(Image.fromarray(big), (0, top))
        d = ImageDraw.Draw(canvas)
        d.rectangle((0, top + h * scale, width, height), fill=color)
        y = top + h * scale + pad
        d.text((pad, y), f"step {min(i, steps)}", fill=(255, 255, 255), font=font)
        d.text((width - pad - d.textlength(outcome, font=font), y), outcome, fill=(255, 255, 255), font=font)
        out.append(np.asarray(canvas))
    return out + [out[-1]] * hold


# --------------------------------------------------------------------------------------------------
# Worker process


def worker_main(spec: dict[str, Any]) -> None:
    """Answers episode requests `{task, seed, video}` (JSON lines on stdin) with one JSON line each;
    `{drop: task}` closes that task's env. Any error is answered as `{error}`, then the worker exits."""
    import torch

    torch.set_num_threads(1)  # one worker per core
    job: dict[str, Any] = {}
    envs: dict[str, MetaWorldEnv] = {}
    try:
        actor: Actor = ExpertActor() if spec["policy_type"] == "expert" else PolicyActor.load(spec)
        for line in sys.stdin:
            job = json.loads(line)
            if "drop" in job:
                env = envs.pop(job["drop"], None)
                if env is not None:
                    env.close()
                continue
            task, seed = job["task"], job["seed"]
            if task not in envs:
                envs[task] = MetaWorldEnv(
                    task, image_size=spec["image_size"], max_episode_steps=spec["max_episode_steps"]
                )
            frames: list[np.ndarray] | None = [] if job.get("video") else None
            result = {"task": task, "seed": seed, **rollout(envs[task], actor, seed, frames)}
            if frames:
                from smolvla.data.video import write_mp4  # PyAV only where videos are asked for

                path = Path(job["video"])
                path.parent.mkdir(parents=True, exist_ok=True)
                captioned = caption_frames(frames, envs[task].task, result["success"], result["steps"])
                write_mp4(path, captioned, FPS)
            answer(result)
    except Exception as e:
        traceback.print_exc()
        error = {"task": job.get("task"), "seed": job.get("seed"), "error": f"{type(e).__name__}: {e}"}
        answer(error)
        sys.exit(1)
    finally:
        for env in envs.values():
            env.close()


# --------------------------------------------------------------------------------------------------
# Main process


class _Worker(Worker):
    task: str | None = None  # the task of its last job: keep it there (one env build per task)


def _next_job(worker: _Worker, pending: dict[str, deque]) -> tuple[str, int] | None:
    """The worker's current task if it has episodes left, else the task with the most left: each
    worker builds few envs, and the tasks finish together."""
    task = worker.task if pending.get(worker.task) else None
    if task is None:
        left = [t for t in pending if pending[t]]
        if not left:
            return None
        task = max(left, key=lambda t: len(pending[t]))  # ties: the earliest task
    return task, pending[task].popleft()


def evaluate(cfg: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """Runs the evaluation; returns the report, also written to `<output_dir>/eval_report.json` with
    the chart `success_by_task.png` and `videos/<task>.mp4`. Prints the success table when `progress`."""
    from tqdm import tqdm

    spec = _policy_spec(cfg)
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    pending = {task: deque(cfg.seeds) for task in cfg.tasks}
    left = {task: cfg.n_episodes for task in cfg.tasks}
    results: dict[str, dict[int, dict]] = {task: {} for task in cfg.tasks}
    answers: Queue = Queue()
    n_total = cfg.n_episodes * len(cfg.tasks)
    successes = finished = 0
    t0 = time.perf_counter()
    workers = [
        _Worker("smolvla.eval", ["--worker", json.dumps(spec)], answers)
        for _ in range(min(cfg.workers, n_total))
    ]
    bar = tqdm(total=n_total, unit="ep", desc="eval", disable=not progress)
    done = False
    try:
        while any(left.values()):
            for w in workers:
                if not w.busy and (job := _next_job(w, pending)) is not None:
                    task, seed = job
                    video = out / "videos" / f"{task}.mp4" if cfg.videos and seed == cfg.seed else None
                    w.send({"task": task, "seed": seed, "video": None if video is None else str(video)})
                    w.task, w.busy = task, True
            worker, reply = answers.get()
            if reply is None:
                raise EvalError(f"an eval worker exited with code {worker.proc.wait()} (its error is above)")
            if "error" in reply:
                where = f" on {reply['task']} seed {reply['seed']}" if reply.get("task") else ""
                raise EvalError(f"eval worker failed{where}: {reply['error']}")
            worker.busy = False
            task = reply["task"]
            results[task][reply["seed"]] = reply
            left[task] -= 1
            if not left[task]:
                for w in workers:
                    w.send({"drop": task})
            successes += reply["success"]
            finished += 1
            bar.update(1)
            bar.set_postfix(success=f"{successes / finished:.0%}")
        done = True
    finally:
        bar.close()
        for w in workers:
            w.close(now=not done)
    report = build_report(cfg, spec, results, time.perf_counter() - t0)
    write_json(out / "eval_report.json", report)
    plot_success(report, out / "success_by_task.png")
    if progress:
        print_table(report)
    return report


def build_report(
    cfg: EvalConfig, spec: dict[str, Any], results: dict[str, dict[int, dict]], wall: float
) -> dict[str, Any]:
    """The report of `evaluate` from its per-episode answers."""
    tasks: dict[str, Any] = {}
    for task in cfg.tasks:
        eps = [results[task][s] for s in cfg.seeds]
        ok = [e["steps"] for e in eps if e["success"]]
        video = cfg.output_dir / "videos" / f"{task}.mp4"
        tasks[task] = {
            "bucket": _BUCKET[task],
            "instruction": INSTRUCTIONS[task],
            "success_rate": round(len(ok) / len(eps), 4),
            "successes": len(ok),
            "n_episodes": len(eps),
            "mean_steps": round(float(np.mean([e["steps"] for e in eps])), 1),
            "mean_steps_success": round(float(np.mean(ok)), 1) if ok else None,
            "mean_sum_reward": round(float(np.mean([e["sum_reward"] for e in eps])), 3),
            "video": str(video) if cfg.videos else None,
            "episodes": [
                {
                    "seed": s,
                    "success": e["success"],
                    "steps": e["steps"],
                    "sum_reward": round(e["sum_reward"], 6),
                    "max_reward": round(e["max_reward"], 6),
                    "seconds": round(e["seconds"], 3),
                }
                for s, e in zip(cfg.seeds, eps, strict=True)
            ],
        }
    buckets = {}
    for bucket in DIFFICULTY:  # the paper's order; only the buckets evaluated
        names = [t for t in cfg.tasks if _BUCKET[t] == bucket]
        if names:
            rate = float(np.mean([tasks[t]["success_rate"] for t in names]))
            buckets[bucket] = {"success_rate": round(rate, 4), "tasks": names}
    all_eps = [e for per_task in results.values() for e in per_task.values()]
    steps = sum(e["steps"] for e in all_eps)
    act_seconds = sum(e["act_seconds"] for e in all_eps)
    keys = ("path", "camera", "n_action_steps", "num_steps", "chunk_size", "backend", "inference_mode")
    policy = {k: spec[k] for k in keys if k in spec}
    return {
        "benchmark": "metaworld",
        "policy": {"type": cfg.policy_type, **policy, "image_size": spec["image_size"]},
        "tasks": tasks,
        "buckets": buckets,
        "overall": {
            "success_rate": round(float(np.mean([t["success_rate"] for t in tasks.values()])), 4),
            "successes": sum(t["successes"] for t in tasks.values()),
            "n_episodes": len(all_eps),
            "n_tasks": len(tasks),
        },
        "seeds": cfg.seeds,
        "config": cfg.to_dict(),
        "wall_seconds": round(wall, 1),
        "env_steps": steps,
        # The action source alone (preprocess + policy + postprocess), per worker; and all of it.
        "policy_steps_per_second": round(steps / max(act_seconds, 1e-9), 1),
        "steps_per_second": round(steps / max(wall, 1e-9), 1),
    }


def print_table(report: dict[str, Any]) -> None:
    """The success table: one row per task, then the buckets and the overall mean over tasks."""

    def steps(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    width = max(len("overall"), *(len(t) for t in report["tasks"])) + 2
    print(f"{'task':<{width}}{'bucket':<11}{'success':>9}{'steps (success)':>17}{'steps (all)':>13}")
    for task, r in report["tasks"].items():
        print(
            f"{task:<{width}}{r['bucket']:<11}{r['success_rate']:>8.1%}"
            f"{steps(r['mean_steps_success']):>17}{steps(r['mean_steps']):>13}"
        )
    print("-" * (width + 50))
    for bucket, r in report["buckets"].items():
        print(f"{'':<{width}}{bucket:<11}{r['success_rate']:>8.1%}   ({len(r['tasks'])} tasks)")
    o = report["overall"]
    print(
        f"{'overall':<{width}}{'':<11}{o['success_rate']:>8.1%}   "
        f"(mean over {o['n_tasks']} tasks, {o['n_episodes']} episodes, seeds "
        f"{report['seeds'][0]}..{report['seeds'][-1]})"
    )


def plot_success(report: dict[str, Any], path: Path) -> None:
    """A horizontal bar per task (colored by bucket) with the overall mean as a dashed line."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state (Agg)
    from matplotlib.patches import Patch

    colors = {"easy": "#4c9f70", "medium": "#e0a040", "hard": "#d0603a", "very_hard": "#8c3b8c"}
    tasks = list(report["tasks"])
    rates = [100 * report["tasks"][t]["success_rate"] for t in tasks]
    fig = Figure(figsize=(7, 1.2 + 0.28 * len(tasks)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(tasks))[::-1]  # the first task on top
    ax.barh(y, rates, color=[colors[report["tasks"][t]["bucket"]] for t in tasks])
    for yi, r in zip(y, rates, strict=True):
        ax.text(min(r + 1, 88), yi, f"{r:.0f}%", va="center", fontsize=8)
    overall = 100 * report["overall"]["success_rate"]
    ax.axvline(overall, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(y, tasks, fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("success (%)")
    n = report["config"]["n_episodes"]
    name = Path(str(report["policy"].get("path") or "scripted expert")).name
    ax.set_title(f"{name}: Meta-World success, {n} episodes per task (mean {overall:.1f}%)", fontsize=9)
    present = {report["tasks"][t]["bucket"] for t in tasks}
    handles = [Patch(color=c, label=b) for b, c in colors.items() if b in present]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    fig.savefig(path, dpi=100)


# --------------------------------------------------------------------------------------------------
# `smolvla eval`'s config: LeRobot's groups (--policy.*, --env.*, --eval.*), turned into an EvalConfig


def _default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


@dataclass(frozen=True)
class EvalPolicyConfig:
    path: str | None = None  # checkpoint folder or hub repo id (with its processor files)
    type: str = "smolvla"  # smolvla, or expert: Meta-World's scripted expert, a check of the harness
    device: str = "cpu"  # cpu, cuda, mps
    n_action_steps: int | None = None  # actions executed per predicted chunk (None: the checkpoint's)
    num_steps: int | None = None  # denoising steps (None: the checkpoint's)
    # torch | onnxruntime | openvino | auto (the fastest measured here, see `smolvla info --speed`)
    backend: str = "torch"
    # fp32 | bf16 | int8 | auto (None: torch's plain policy, fp32 for the exported backends)
    inference_mode: str | None = None


@dataclass(frozen=True)
class EvalEnvConfig:
    type: str = "metaworld"  # the only simulator here
    # comma-separated tasks (reach-v3,drawer-close-v3) or a difficulty: easy|medium|hard|very_hard|all
    task: str | None = None
    image_size: int | None = None  # rendered image side in pixels (None: the policy's camera size)
    max_episode_steps: int = MAX_EPISODE_STEPS  # steps before an episode counts as failed


@dataclass(frozen=True)
class EvalEpisodesConfig:
    n_episodes: int = 10  # episodes per task
    workers: int = field(default_factory=_default_workers)  # simulator processes, one per core
    videos: bool = True  # an MP4 of each task's first episode


@dataclass(frozen=True)
class EvalPipelineConfig:
    """Evaluate a policy in Meta-World: success per task and difficulty, a chart, videos."""

    policy: EvalPolicyConfig = field(default_factory=EvalPolicyConfig)
    env: EvalEnvConfig = field(default_factory=EvalEnvConfig)
    eval: EvalEpisodesConfig = field(default_factory=EvalEpisodesConfig)
    seed: int = EVAL_SEED_BASE  # seed of each task's first episode (episode i: seed + i)
    output_dir: str | None = None  # report, chart and videos (None: outputs/eval/<date>_<time>_metaworld)

    def eval_config(self) -> EvalConfig:
        """The evaluation these settings ask for; raises EvalError naming the flag."""
        if self.env.type != "metaworld":
            raise EvalError(
                f"--env.type: got {self.env.type!r}, expected 'metaworld' (the only simulator here)"
            )
        if not self.env.task:
            raise EvalError(
                "--env.task is required: tasks (T1,T2) or a difficulty: easy|medium|hard|very_hard|all"
            )
        if self.policy.type == "smolvla" and self.policy.path is None:
            raise EvalError("--policy.path: missing, expected a checkpoint folder (or --policy.type=expert)")
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        return EvalConfig(
            policy_path=self.policy.path,
            tasks=tuple(tasks_for(self.env.task)),
            output_dir=Path(self.output_dir or f"outputs/eval/{stamp}_metaworld"),
            n_episodes=self.eval.n_episodes,
            seed=self.seed,
            n_action_steps=self.policy.n_action_steps,
            num_steps=self.policy.num_steps,
            image_size=self.env.image_size,
            max_episode_steps=self.env.max_episode_steps,
            workers=self.eval.workers,
            videos=self.eval.videos,
            device=self.policy.device,
            policy_type=self.policy.type,
            inference_mode=self.policy.inference_mode,
            backend=self.policy.backend,
        )


def run_pipeline(pipeline: EvalPipelineConfig) -> dict[str, Any]:
    """Evaluates, prints the table and where the files are; returns the report."""
    cfg = pipeline.eval_config()
    report = evaluate(cfg)
    print(f"report: {cfg.output_dir / 'eval_report.json'}  chart: {cfg.output_dir / 'success_by_task.png'}")
    if cfg.videos:
        print(f"videos: {cfg.output_dir / 'videos'}")
    print(
        f"{report['wall_seconds']} s, {report['env_steps']} steps, "
        f"{report['policy_steps_per_second']} policy steps/s per worker"
    )
    return report
