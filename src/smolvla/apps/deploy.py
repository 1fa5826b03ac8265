"""`smolvla deploy sim`: the Meta-World robot driven in real time by the robot client against a policy
server, synchronously or asynchronously, measured.

    smolvla deploy sim --policy.path=DIR --env.task=drawer-close-v3 --mode sync async --fps=30 \\
        --latency=1.0 --n_episodes=3 --output_dir=outputs/deploy

Each variant (`sync`, `async`, `async+rtc`) runs the same episodes (task x seed). The server is a
separate `smolvla serve` process on loopback (one per RTC setting), or `--server=URL`. `--latency=S`
pads every inference on the server to at least S seconds: it stands in for a slower model or device
(the full-size SmolVLA takes about 1-4 s per chunk on consumer hardware; the tiny checkpoints here take
tens of milliseconds), so the comparison holds for them too. `--latency=auto` uses the real inference
time.

Per episode: success, task completion time (wall clock from the first tick to success or the end),
executed actions per second, ticks the robot waited with an empty queue, and the action jumps at chunk
boundaries versus steps inside a chunk (what RTC should remove). Writes `deploy_report.json` and, with
`--video=true`, one MP4 per variant of its first episode.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smolvla.config import ConfigError
from smolvla.envs.metaworld import EVAL_SEED_BASE
from smolvla.serving.client import (
    AGGREGATE_FUNCTIONS,
    ClientStats,
    PolicyClient,
    RobotClient,
    RobotClientConfig,
)
from smolvla.serving.mapping import PolicyFeatures, RobotFeatures, check_mapping
from smolvla.serving.robot import MetaWorldRobot
from smolvla.serving.safety import ActionGuard
from smolvla.serving.server import ServePolicyConfig
from smolvla.serving.session import MappedRobot

VARIANTS = ("sync", "async", "async+rtc")


def boundary_jumps(log: list[Any]) -> dict[str, float | int | None]:
    """How the executed actions change where the executed chunk changes (a boundary) versus inside a
    chunk: the mean L2 action change at boundaries and inside chunks, and the switch gap, the mean and
    largest L2 distance at a boundary between the action executed and the one the previous chunk had
    planned for that step. A boundary change well above the inside step, or a large switch gap, is a
    jump of the arm."""
    boundary, inside, gaps = [], [], []
    for prev, cur in itertools.pairwise(log):
        d = float(np.linalg.norm(np.asarray(cur.action) - np.asarray(prev.action)))
        (boundary if cur.chunk != prev.chunk else inside).append(d)
        if cur.chunk != prev.chunk and cur.replaced is not None:
            gaps.append(float(np.linalg.norm(np.asarray(cur.action) - np.asarray(cur.replaced))))
    return {
        "boundaries": len(boundary),
        "boundary_jump": float(np.mean(boundary)) if boundary else None,
        "inside_step": float(np.mean(inside)) if inside else None,
        "switch_gap": float(np.mean(gaps)) if gaps else None,
        "switch_gap_max": float(np.max(gaps)) if gaps else None,
    }


class ServerProcess:
    """`smolvla serve` as a subprocess on a free loopback port."""

    def __init__(self, policy_path: str, latency: float, rtc: bool, extra: list[str] | None = None) -> None:
        cmd = [
            sys.executable,
            "-m",
            "smolvla.apps.cli",
            "serve",
            f"--policy.path={policy_path}",
            "--port=0",
            f"--latency={latency}",
            "--log_level=WARNING",
            *(extra or []),
        ]
        if rtc:
            cmd.append("--rtc.enabled=true")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        try:
            self.url = json.loads(line)["url"]
        except (json.JSONDecodeError, KeyError, TypeError):
            self.proc.kill()
            raise RuntimeError(
                f"the policy server did not start (it printed {line!r}); see its stderr"
            ) from None

    def close(self) -> None:
        self.proc.terminate()  # SIGTERM: the graceful shutdown path
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_episode(
    robot: MetaWorldRobot, policy: PolicyClient, config: RobotClientConfig, seed: int, frames: list | None
) -> dict[str, Any]:
    robot.reset(seed)
    mapping = check_mapping(RobotFeatures.of(robot), PolicyFeatures.from_metadata(policy.metadata), {})
    # the simulator clips to [-1, 1] itself; no step or joint limits, as in evaluation
    client = RobotClient(MappedRobot(robot, mapping, ActionGuard(mapping.robot.action)), policy, config)
    client.reset()
    ticks = robot.max_episode_steps * 4  # the robot may wait; the env truncates at max_episode_steps
    t0 = time.monotonic()
    success_at: list[float] = []

    def done() -> bool:
        if frames is not None:
            frames.append(robot.env.render())
        if robot.success and not success_at:
            success_at.append(time.monotonic() - t0)
        return robot.done

    with client:
        stats: ClientStats = client.run(ticks, done)
    seconds = time.monotonic() - t0
    lat = np.asarray(stats.latencies_s) * 1000
    return {
        "seed": seed,
        "success": robot.success,
        "steps": robot.steps,
        "completion_s": success_at[0] if success_at else seconds,
        "seconds": seconds,
        "actions_per_s": stats.executed / seconds if seconds > 0 else 0.0,
        "idle_ticks": stats.idle_ticks,
        # The share of wall time the arm stood still: waiting for a chunk (sync), or with an empty queue.
        "waiting_fraction": max(0.0, 1.0 - stats.executed / (seconds * config.fps)) if seconds > 0 else 0.0,
        "ticks": stats.ticks,
        "chunks": stats.chunks,
        "observations_sent": stats.observations_sent,
        "skipped_similar": stats.skipped_similar,
        "dropped_stale": stats.dropped_stale,
        "latency_ms_p50": float(np.percentile(lat, 50)) if lat.size else None,
        **boundary_jumps(stats.log),
    }


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r["success"]]
    return {
        "episodes": len(rows),
        "success_rate": len(ok) / len(rows) if rows else 0.0,
        "completion_s_successes": _mean(ok, "completion_s"),
        "completion_s_all": _mean(rows, "completion_s"),
        "steps_successes": _mean(ok, "steps"),
        "actions_per_s": _mean(rows, "actions_per_s"),
        "waiting_fraction": _mean(rows, "waiting_fraction"),
        "boundary_jump": _mean(rows, "boundary_jump"),
        "inside_step": _mean(rows, "inside_step"),
        "switch_gap": _mean(rows, "switch_gap"),
        "switch_gap_max": max(
            (r["switch_gap_max"] for r in rows if r.get("switch_gap_max") is not None), default=None
        ),
        "latency_ms_p50": _mean(rows, "latency_ms_p50"),
    }


def parse_variants(spec: str) -> list[str]:
    out = [v.strip() for v in spec.split(",") if v.strip()]
    bad = [v for v in out if v not in VARIANTS]
    if not out or bad:
        raise ConfigError(f"--mode: got {spec!r}, expected variants among {list(VARIANTS)}")
    return out


def parse_latency(v: str) -> float:
    if v == "auto":
        return 0.0
    try:
        s = float(v)
    except ValueError:
        raise ConfigError(f"--latency: got {v!r}, expected 'auto' or seconds >= 0") from None
    if not (s >= 0 and np.isfinite(s)):
        raise ConfigError(f"--latency: got {v!r}, expected 'auto' or seconds >= 0")
    return s


@dataclass(frozen=True)
class DeployEnvConfig:
    task: str | None = None  # Meta-World task(s), comma-separated
    image_size: int | None = None  # rendered camera side (None: the policy's)
    max_episode_steps: int = 400  # an episode not done by then counts as failed


@dataclass(frozen=True)
class DeployConfig:
    """The Meta-World robot driven in real time by the robot client against a policy server."""

    policy: ServePolicyConfig = field(default_factory=ServePolicyConfig)
    env: DeployEnvConfig = field(default_factory=DeployEnvConfig)
    mode: tuple[str, ...] = ("sync", "async")  # variants to run, among sync, async, async+rtc
    fps: float = 30.0  # the robot's control rate
    latency: str = "auto"  # 'auto' (real inference time) or seconds per chunk the server pads to
    n_episodes: int = 3  # per task
    seed: int = EVAL_SEED_BASE  # seed of each task's first episode
    chunk_size_threshold: float = 0.5  # async: ask for a new chunk when this fraction of the queue is left
    aggregate: str = "weighted_average"  # how overlapping chunks merge: one of AGGREGATE_FUNCTIONS
    similarity_atol: float = 0.01  # observations closer than this are not sent again
    server: str | None = None  # a running server's URL (its own --latency and --rtc apply)
    output_dir: str = "outputs/deploy"  # deploy_report.json and the videos
    video: bool = False  # an MP4 of each variant's first episode


def run_command(args: DeployConfig) -> dict[str, Any]:
    """Runs every variant on every task's episodes, prints the table; returns the report."""
    from tqdm import tqdm

    from smolvla.envs.metaworld import tasks_for
    from smolvla.io import write_json

    if not args.policy.path:
        raise ConfigError("--policy.path is required: a checkpoint folder or hub repo id")
    if not args.env.task:
        raise ConfigError("--env.task is required: Meta-World task(s), comma-separated")
    if args.aggregate not in AGGREGATE_FUNCTIONS:
        raise ConfigError(f"--aggregate: got {args.aggregate!r}, expected one of {list(AGGREGATE_FUNCTIONS)}")
    variants = parse_variants(",".join(args.mode))  # `--mode=sync,async` still reads as two
    latency = parse_latency(args.latency)
    tasks = tasks_for(args.env.task)
    if args.n_episodes < 1:
        raise ConfigError(f"--n_episodes: got {args.n_episodes}, expected a positive integer")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    image_size = args.env.image_size
    if image_size is None:
        from smolvla.config import SmolVLAConfig
        from smolvla.hub import resolve_dir

        cfg = SmolVLAConfig.load(resolve_dir(args.policy.path, allow_patterns=["*.json"]) / "config.json")
        image_size = next(iter(cfg.image_features.values())).shape[1]

    policy_flags = [
        f"--policy.{name}={value}"
        for name, value in (
            ("device", args.policy.device),
            ("num_steps", args.policy.num_steps),
            ("inference_mode", args.policy.inference_mode),
        )
        if value is not None
    ]
    servers: dict[bool, Any] = {}
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    robots = {t: MetaWorldRobot(t, image_size, args.env.max_episode_steps) for t in tasks}
    total = len(variants) * len(tasks) * args.n_episodes
    try:
        with tqdm(total=total, desc="deploy sim", unit="episode") as bar:
            for variant in variants:
                rtc = variant == "async+rtc"
                if args.server is None and rtc not in servers:
                    servers[rtc] = ServerProcess(args.policy.path, latency, rtc, policy_flags)
                url = args.server or servers[rtc].url
                with PolicyClient(url) as policy:
                    for task, robot in robots.items():
                        config = RobotClientConfig(
                            task=robot.instruction,
                            fps=args.fps,
                            chunk_size_threshold=args.chunk_size_threshold,
                            aggregate_fn_name=args.aggregate,
                            similarity_atol=args.similarity_atol,
                            mode="sync" if variant == "sync" else "async",
                        )
                        for i in range(args.n_episodes):
                            frames: list | None = [] if (args.video and i == 0) else None
                            row = run_episode(robot, policy, config, args.seed + i, frames)
                            results[variant].append({"task": task, **row})
                            if frames:
                                _video(out / f"{variant}_{task}.mp4", frames, robot, row, args.fps)
                            bar.set_postfix(variant=variant, task=task, success=row["success"])
                            bar.update()
    finally:
        for s in servers.values():
            s.close()
        for r in robots.values():
            r.disconnect()
    report = {
        "config": dataclasses.asdict(args),
        "policy_path": args.policy.path,
        "tasks": tasks,
        "fps": args.fps,
        "latency": args.latency,
        "chunk_size_threshold": args.chunk_size_threshold,
        "aggregate": args.aggregate,
        "summary": {v: summarize(rows) for v, rows in results.items()},
        "episodes": results,
    }
    write_json(out / "deploy_report.json", report)
    print(table(report))
    print(f"report: {out / 'deploy_report.json'}")
    return report


def table(report: dict[str, Any]) -> str:
    def f(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        "| mode | success | completion time (s, successes) | steps | actions/s | robot waiting "
        "| boundary jump | step in chunk | switch gap (mean / max) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v, s in report["summary"].items():
        lines.append(
            f"| {v} | {s['success_rate']:.0%} ({s['episodes']} ep.) "
            f"| {f(s['completion_s_successes'], '.2f')} | {f(s['steps_successes'], '.0f')} | "
            f"{f(s['actions_per_s'], '.1f')} | {f(s['waiting_fraction'], '.0%')} "
            f"| {f(s['boundary_jump'], '.3f')} | "
            f"{f(s['inside_step'], '.3f')} | {f(s['switch_gap'], '.3f')} / {f(s['switch_gap_max'], '.2f')} |"
        )
    return "\n".join(lines)


def _video(path: Path, frames: list, robot: MetaWorldRobot, row: dict[str, Any], fps: float) -> None:
    from smolvla.data.video import write_mp4
    from smolvla.eval.metaworld import caption_frames

    rate = max(1, round(fps))  # one frame per control tick: waiting shows as a still arm
    write_mp4(path, caption_frames(frames, robot.instruction, row["success"], row["steps"], rate // 2), rate)
