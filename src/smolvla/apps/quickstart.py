"""`smolvla quickstart`: the whole loop on a laptop CPU, with nothing downloaded.

1. record Meta-World's scripted experts on a few tasks (one language-conditioned dataset);
2. train SmolVLA's `tiny` preset on it from scratch;
3. evaluate the policy on initial states never seen in training (other seeds);
4. write a report: success table, training curves, one rollout video per task.

Everything lands in `--output_dir` (default outputs/quickstart); each phase's wall time is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smolvla.config import ConfigError
from smolvla.io import write_json

# Tasks whose objects are large in a 64 px corner2 view, with distinct instructions: one policy must
# read the instruction to know which to do. (reach-v3's goal is a 1-2 px dot at this size.)
TASKS = ("button-press-topdown-v3", "handle-press-v3", "drawer-close-v3", "plate-slide-v3", "door-close-v3")


@dataclass(frozen=True)
class QuickstartConfig:
    output_dir: Path = Path("outputs/quickstart")
    tasks: tuple[str, ...] = TASKS
    episodes: int = 40  # expert demonstrations per task
    image_size: int = 64
    steps: int = 2000
    batch_size: int = 64
    eval_episodes: int = 20  # per task, on seeds disjoint from the recording's
    seed: int = 0
    num_workers: int = 2  # DataLoader workers per training process
    # Image augmentation off: on these tasks, with eval views rendered like the training ones, random
    # shifts and crops cost success (no augmentation 91 %, shifts of 2 px 79 %, crops + 4 px 72 %,
    # measured on the same data and seed), as they blur where a small target sits in a 64 px image.
    augment: bool = False
    # Training processes (DDP over gloo, one torch thread each); None: 2 on a CPU with 2+ cores, else 1.
    # A model this small keeps two cores busier as two single-thread processes than as one process
    # with two threads.
    processes: int | None = None

    def __post_init__(self) -> None:
        if self.processes is None:
            import torch

            auto = 1 if torch.cuda.is_available() else min(2, os.cpu_count() or 1)
            object.__setattr__(self, "processes", auto)
        for name in ("episodes", "image_size", "steps", "batch_size", "eval_episodes", "processes"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')}: got {getattr(self, name)}, expected a positive integer"
                )
        if self.batch_size % self.processes:
            raise ConfigError(
                f"--batch-size: got {self.batch_size}, expected a multiple of --processes ({self.processes})"
            )


def run(cfg: QuickstartConfig) -> dict[str, Any]:
    from smolvla.config import preset
    from smolvla.envs.metaworld import INSTRUCTIONS
    from smolvla.envs.record import RecordConfig, record
    from smolvla.eval.metaworld import EvalConfig, evaluate
    from smolvla.processing.tokenizer import distinct_length, load_tokenizer
    from smolvla.train import TrainConfig, train
    from smolvla.train.config import DatasetConfig

    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--output-dir {out} is not empty: choose a new folder (or delete it)")
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    print(
        f"[1/3] recording {cfg.episodes} expert demonstrations for each of {len(cfg.tasks)} tasks", flush=True
    )
    data = out / "data"
    rec = record(
        RecordConfig(
            tasks=cfg.tasks, episodes=cfg.episodes, output=data, image_size=cfg.image_size, seed=cfg.seed
        )
    )
    times["record_s"] = time.perf_counter() - t0

    print(f"[2/3] training the tiny preset for {cfg.steps} steps (batch {cfg.batch_size})", flush=True)
    t1 = time.perf_counter()
    tiny = preset("tiny")
    # many tasks (--tasks all) need longer prompts than the preset's to stay distinct
    need = distinct_length(load_tokenizer(tiny.vlm_model_name), [INSTRUCTIONS[t] for t in cfg.tasks])
    tcfg = TrainConfig(
        dataset=DatasetConfig(repo_id=str(data), augment=cfg.augment),
        policy_preset="tiny",
        policy_overrides={"tokenizer_max_length": need} if need > tiny.tokenizer_max_length else {},
        output_dir=str(out / "train"),
        batch_size=cfg.batch_size // cfg.processes,  # per process: the global batch stays cfg.batch_size
        steps=cfg.steps,
        save_freq=cfg.steps,
        log_freq=max(1, cfg.steps // 20),
        eval_freq=0,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
    )
    train_dir = train(tcfg) if cfg.processes == 1 else _train_ddp(tcfg, cfg.processes, out)
    times["train_s"] = time.perf_counter() - t1

    print(f"[3/3] evaluating on {cfg.eval_episodes} new initial states per task", flush=True)
    t2 = time.perf_counter()
    ckpt = train_dir / "checkpoints" / "last" / "pretrained_model"
    report = evaluate(
        EvalConfig(
            policy_path=str(ckpt), tasks=cfg.tasks, n_episodes=cfg.eval_episodes, output_dir=str(out / "eval")
        )
    )
    times["eval_s"] = time.perf_counter() - t2
    times["total_s"] = time.perf_counter() - t0

    metrics = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    summary = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
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
    """`torchrun --standalone --nproc_per_node=N -m smolvla.train` on this config; its output folder."""
    config = out / "train_config.json"
    write_json(config, tcfg.to_dict())
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "smolvla.train",
        f"--config_path={config}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # processes x threads = cores
    subprocess.run(cmd, check=True, env=env)
    return Path(tcfg.output_dir)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="smolvla quickstart", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = QuickstartConfig()
    p.add_argument("--output-dir", type=Path, default=d.output_dir)
    p.add_argument("--tasks", default=",".join(d.tasks), help="comma-separated Meta-World tasks")
    p.add_argument("--episodes", type=int, default=d.episodes, help="demonstrations per task")
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--eval-episodes", type=int, default=d.eval_episodes)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--processes", type=int, default=None, help="training processes (DDP); default: 2 on a CPU"
    )
    p.add_argument(
        "--augment", action="store_true", help="image augmentation during training (off by default)"
    )
    a = p.parse_args(argv)
    from smolvla.envs.metaworld import tasks_for

    run(
        QuickstartConfig(
            output_dir=a.output_dir,
            tasks=tuple(tasks_for(a.tasks)),
            episodes=a.episodes,
            image_size=a.image_size,
            steps=a.steps,
            batch_size=a.batch_size,
            eval_episodes=a.eval_episodes,
            seed=a.seed,
            processes=a.processes,
            augment=a.augment,
        )
    )
