"""`smolvla quickstart`: the whole loop on a laptop CPU, with nothing downloaded.

1. record Meta-World's scripted experts on a few tasks (one language-conditioned dataset);
2. train SmolVLA's `tiny` preset on it from scratch;
3. evaluate the policy on initial states never seen in training (other seeds);
4. write a report: success table, training curves, one rollout video per task.

Everything lands in `--output_dir` (default outputs/quickstart); each phase's wall time is reported.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smolvla.config import ConfigError
from smolvla.io import write_json

# Tasks whose objects are large in a 64 px corner2 view, with distinct instructions: one policy must
# read the instruction to know which to do. (reach-v3's goal is a 1-2 px dot at this size.)
TASKS = ("button-press-topdown-v3", "handle-press-v3", "drawer-close-v3", "plate-slide-v3", "door-close-v3")


@dataclass(frozen=True)
class QuickstartEnvConfig:
    task: str = ",".join(TASKS)  # comma-separated Meta-World tasks (or a difficulty: easy, ...)
    image_size: int = 64  # rendered camera side in pixels


@dataclass(frozen=True)
class QuickstartDatasetConfig:
    num_episodes: int = 40  # expert demonstrations per task
    # Image augmentation off: on these tasks, with eval views rendered like the training ones, random
    # shifts and crops cost success (no augmentation 91 %, shifts of 2 px 79 %, crops + 4 px 72 %,
    # measured on the same data and seed), as they blur where a small target sits in a 64 px image.
    augment: bool = False


@dataclass(frozen=True)
class QuickstartEvalConfig:
    n_episodes: int = 20  # per task, on seeds disjoint from the recording's


@dataclass(frozen=True)
class QuickstartConfig:
    """Record Meta-World demonstrations, train the tiny preset, evaluate: the whole loop on a CPU."""

    output_dir: str = "outputs/quickstart"  # everything lands here; it must be new or empty
    env: QuickstartEnvConfig = field(default_factory=QuickstartEnvConfig)
    dataset: QuickstartDatasetConfig = field(default_factory=QuickstartDatasetConfig)
    eval: QuickstartEvalConfig = field(default_factory=QuickstartEvalConfig)
    steps: int = 2000  # training steps
    batch_size: int = 64  # global batch, split over the training processes
    seed: int = 0  # recording seeds, weight init and data order
    num_workers: int = 2  # DataLoader workers per training process
    # Training processes (DDP over gloo, one torch thread each); None: 2 on a CPU with 2+ cores, else 1.
    # A model this small keeps two cores busier as two single-thread processes than as one process
    # with two threads.
    num_processes: int | None = None

    def __post_init__(self) -> None:
        if self.num_processes is None:
            import torch

            auto = 1 if torch.cuda.is_available() else min(2, os.cpu_count() or 1)
            object.__setattr__(self, "num_processes", auto)
        values = {
            "dataset.num_episodes": self.dataset.num_episodes,
            "env.image_size": self.env.image_size,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "eval.n_episodes": self.eval.n_episodes,
            "num_processes": self.num_processes,
        }
        for name, v in values.items():
            if v < 1:
                raise ConfigError(f"--{name}: got {v}, expected a positive integer")
        if self.batch_size % self.num_processes:
            raise ConfigError(
                f"--batch_size: got {self.batch_size}, expected a multiple of --num_processes "
                f"({self.num_processes})"
            )

    @property
    def tasks(self) -> tuple[str, ...]:
        from smolvla.envs.metaworld import tasks_for

        return tuple(tasks_for(self.env.task))


# The flags before smolvla took LeRobot's spelling -> now.
RENAMES = {
    "--output-dir": "--output_dir",
    "--tasks": "--env.task",
    "--episodes": "--dataset.num_episodes",
    "--image-size": "--env.image_size",
    "--batch-size": "--batch_size",
    "--eval-episodes": "--eval.n_episodes",
    "--processes": "--num_processes",
    "--augment": "--dataset.augment=true",
}


def run(cfg: QuickstartConfig) -> dict[str, Any]:
    from smolvla.config import preset
    from smolvla.envs.metaworld import INSTRUCTIONS
    from smolvla.envs.record import RecordConfig, record
    from smolvla.eval.metaworld import EvalConfig, evaluate
    from smolvla.processing.tokenizer import distinct_length, load_tokenizer
    from smolvla.train import TrainConfig, train
    from smolvla.train.config import DatasetConfig, TrainPolicyConfig

    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--output_dir {out} is not empty: choose a new folder (or delete it)")
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    print(
        f"[1/3] recording {cfg.dataset.num_episodes} expert demonstrations for each of "
        f"{len(cfg.tasks)} tasks",
        flush=True,
    )
    data = out / "data"
    rec = record(
        RecordConfig(
            tasks=cfg.tasks,
            episodes=cfg.dataset.num_episodes,
            output=data,
            image_size=cfg.env.image_size,
            seed=cfg.seed,
        )
    )
    times["record_s"] = time.perf_counter() - t0

    print(f"[2/3] training the tiny preset for {cfg.steps} steps (batch {cfg.batch_size})", flush=True)
    t1 = time.perf_counter()
    tiny = preset("tiny")
    # many tasks (--env.task=all) need longer prompts than the preset's to stay distinct
    need = distinct_length(load_tokenizer(tiny.vlm_model_name), [INSTRUCTIONS[t] for t in cfg.tasks])
    tcfg = TrainConfig(
        dataset=DatasetConfig(repo_id=str(data), augment=cfg.dataset.augment),
        policy=TrainPolicyConfig(
            preset="tiny",
            overrides={"tokenizer_max_length": need} if need > tiny.tokenizer_max_length else {},
        ),
        output_dir=str(out / "train"),
        batch_size=cfg.batch_size // cfg.num_processes,  # per process: the global batch stays cfg.batch_size
        steps=cfg.steps,
        save_freq=cfg.steps,
        log_freq=max(1, cfg.steps // 20),
        eval_freq=0,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
    )
    train_dir = train(tcfg) if cfg.num_processes == 1 else _train_ddp(tcfg, cfg.num_processes, out)
    times["train_s"] = time.perf_counter() - t1

    print(f"[3/3] evaluating on {cfg.eval.n_episodes} new initial states per task", flush=True)
    t2 = time.perf_counter()
    ckpt = train_dir / "checkpoints" / "last" / "pretrained_model"
    report = evaluate(
        EvalConfig(
            policy_path=str(ckpt),
            tasks=cfg.tasks,
            n_episodes=cfg.eval.n_episodes,
            output_dir=str(out / "eval"),
        )
    )
    times["eval_s"] = time.perf_counter() - t2
    times["total_s"] = time.perf_counter() - t0

    metrics = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    summary = {
        "config": dataclasses.asdict(cfg),
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "demonstrations": {"episodes": rec["episodes"], "frames": rec["frames"]},
        "training": {
            "final_loss": metrics[-1]["loss"],
            "samples_per_s": round(metrics[-1]["samples_per_s"], 1),
        },
        "success": {t: r["success_rate"] for t, r in report["tasks"].items()},
        "mean_success": report["overall"]["success_rate"],
        "eval_seeds": report["seeds"],
        "files": {
            "checkpoint": str(ckpt),
            "training_curves": str(train_dir / "training_curves.png"),
            "eval_report": str(out / "eval" / "eval_report.json"),
            "videos": str(out / "eval" / "videos"),
        },
    }
    write_json(out / "quickstart_report.json", summary)
    minutes = times["total_s"] / 60
    print(
        f"\nquickstart: mean success {summary['mean_success']:.0%} over {len(cfg.tasks)} tasks "
        f"in {minutes:.1f} min (record {times['record_s'] / 60:.1f}, train {times['train_s'] / 60:.1f}, "
        f"eval {times['eval_s'] / 60:.1f}); report: {out / 'quickstart_report.json'}"
    )
    return summary


def _train_ddp(tcfg: Any, processes: int, out: Path) -> Path:
    """`torchrun --standalone --nproc_per_node=N -m smolvla.apps.cli train` on this config; its output
    folder."""
    config = out / "train_config.json"
    write_json(config, tcfg.to_dict())
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "smolvla.apps.cli",
        "train",
        f"--config_path={config}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # processes x threads = cores
    subprocess.run(cmd, check=True, env=env)
    return Path(tcfg.output_dir)
