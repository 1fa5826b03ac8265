"""The `smolvla` command: one registry of commands, each a config dataclass (its flags, parsed by
draccus as LeRobot does) and the function that runs it.

    smolvla train --policy.path=DIR --dataset.repo_id=DIR --steps=2000 --batch_size=8
    smolvla train --output_dir=DIR --resume=true

Every command answers `--help` and accepts `--config_path=FILE.json` (flags given beside override the
file). Older spellings (`--batch-size`, positional folders) still work, each with one deprecation
line on stderr. A SmolVLAError (bad input) prints as one line `smolvla <command>: error: ...` and
exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smolvla.apps import flags
from smolvla.apps.flags import UsageError
from smolvla.errors import SmolVLAError


@dataclass(frozen=True)
class Command:
    """One `smolvla` command (or a group of subcommands, when `subcommands` is set)."""

    name: str
    summary: str  # one line, for `smolvla --help`
    config: type | None = None  # the config dataclass: its fields are the flags
    run: Callable[[Any], Any] | None = None
    subcommands: tuple[Command, ...] = ()
    # Deprecated spelling -> new one (`--json` -> `--json=true` for a former bare flag).
    renames: Mapping[str, str] = field(default_factory=dict)
    positional: str | None = None  # the flag a former positional argument (`info DIR`) now is
    # argv rewriting after renames and before draccus, for what flags alone cannot say (train's resume)
    prepare: Callable[[list[str]], list[str]] | None = None
    # notes after the flags in --help; a function of argv when they depend on it (robot-client's --robot.type)
    epilog: str | Callable[[list[str]], str] = ""

    def sub(self, name: str) -> Command:
        for c in self.subcommands:
            if c.name == name:
                return c
        names = [c.name for c in self.subcommands]
        close = difflib.get_close_matches(name, names, 1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"unknown subcommand {name!r}{hint}; expected one of {names}")


# --------------------------------------------------------------------------------------------------
# The commands' run functions (the library does the work; these only connect config and output)


def _run_train(cfg: Any) -> None:
    from smolvla.train import train

    train(cfg)


def _train_prepare(argv: list[str]) -> list[str]:
    """`--resume=true` without `--config_path`: the run's own config, from its last checkpoint."""
    given = dict(a[2:].partition("=")[::2] for a in argv)
    if given.get("resume", "false").lower() not in ("true", "1", "yes") or "config_path" in given:
        return argv
    from smolvla.train.state import LAST, PRETRAINED, resume_checkpoint

    if not given.get("output_dir"):
        raise UsageError("--resume=true needs --output_dir=DIR (the run to continue) or --config_path")
    out = Path(given["output_dir"])
    # training checks the checkpoint itself; here only its config is needed
    ckpt = out / "checkpoints" / LAST
    if not (ckpt / PRETRAINED / "train_config.json").is_file():
        ckpt = resume_checkpoint(out)
    if ckpt is None or not (ckpt / PRETRAINED / "train_config.json").is_file():
        raise UsageError(
            f"--resume=true but {out} holds no checkpoint (the run stopped before its first one): there is "
            "nothing to resume; run the same command without --resume=true to start over in it"
        )
    return [f"--config_path={ckpt / PRETRAINED / 'train_config.json'}", *argv]


def _run_eval(cfg: Any) -> None:
    from smolvla.eval.metaworld import run_pipeline

    run_pipeline(cfg)


def _run_serve(cfg: Any) -> None:
    from smolvla.serving.server import run_server

    run_server(cfg)


def _run_export(cfg: Any) -> None:
    from smolvla.runtime.export import run_export

    run_export(cfg)


def _run_record(cfg: Any) -> None:
    from smolvla.envs.record import run_record

    run_record(cfg)


def commands() -> tuple[Command, ...]:
    """The registry. Configs are imported here, not at module import, so `smolvla --help` is quick."""
    from smolvla.apps import (
        bench,
        bench_data,
        bench_serving,
        bench_sim,
        deploy,
        quickstart,
        robot_client,
        tools,
    )
    from smolvla.envs.record import RecordPipelineConfig
    from smolvla.eval.metaworld import EvalPipelineConfig
    from smolvla.runtime.export import ExportPipelineConfig
    from smolvla.serving.server import ServeConfig
    from smolvla.train.config import TrainConfig

    bench_renames = {
        "--batch": "--batch_size",
        "--num-steps": "--policy.num_steps",
        "--image-size": "--image_size",
        "--no-matmul": "--matmul=false",
        "--lerobot-script": "--lerobot_script",
        "--preset": "--policy.preset",
    }
    return (
        Command(
            "quickstart",
            "record Meta-World demos, train the tiny preset, evaluate: the whole loop on a CPU",
            quickstart.QuickstartConfig,
            quickstart.run,
            renames=quickstart.RENAMES,
        ),
        Command(
            "train",
            "train or fine-tune a policy: --policy.path=... --dataset.repo_id=... --steps=N",
            TrainConfig,
            _run_train,
            renames={
                "--dataset.image_transforms.enable": "--dataset.augment",
                "--wandb": "--wandb.enable",
                "--eval.max_episode_steps": "--env.max_episode_steps",
            },
            prepare=_train_prepare,
            epilog=flags.policy_overrides_help(),
        ),
        Command(
            "eval",
            "evaluate a policy in Meta-World: success per task and bucket, chart, videos",
            EvalPipelineConfig,
            _run_eval,
            renames={
                "--env.difficulty": "--env.task",
                "--eval.max_episode_steps": "--env.max_episode_steps",
            },
        ),
        Command(
            "bench",
            "speed and memory here: s/chunk per inference mode, training step; --compare to LeRobot",
            subcommands=(
                *(
                    Command(name, text, cfg, bench.run_command, renames=bench_renames)
                    for name, text, cfg in bench.CASES
                ),
                Command(
                    "data_loader",
                    "recording and loading speed of the data layer, per camera size and video codec",
                    bench_data.BenchDataLoaderConfig,
                    bench_data.run,
                ),
                Command(
                    "metaworld_fps",
                    "frames per second of a Meta-World env with the scripted expert, per image size",
                    bench_sim.BenchMetaWorldConfig,
                    bench_sim.run,
                ),
                Command(
                    "serving_load",
                    "latency of the policy server under concurrent client processes",
                    bench_serving.BenchServingConfig,
                    bench_serving.run,
                ),
            ),
        ),
        Command(
            "dataset",
            "look at a dataset: info | show | stats | check --dataset.repo_id=DIR",
            subcommands=(
                Command(
                    "info",
                    "episodes, frames, fps, features, cameras, tasks, stats",
                    tools.DatasetInfoConfig,
                    tools.run_dataset_info,
                    renames={"--json": "--json=true"},
                    positional="dataset.repo_id",
                ),
                Command(
                    "show",
                    "an episode as MP4 (cameras + instruction) and a PNG of state/action",
                    tools.DatasetShowConfig,
                    tools.run_dataset_show,
                    renames={"--episode": "--episode_index", "--output": "--output_path"},
                    positional="dataset.repo_id",
                ),
                Command(
                    "stats",
                    "recompute meta/stats.json from the data",
                    tools.DatasetStatsConfig,
                    tools.run_dataset_stats,
                    positional="dataset.repo_id",
                ),
                Command(
                    "check",
                    "check files, headers and rows against the metadata (--full=true: decode every frame)",
                    tools.DatasetCheckConfig,
                    tools.run_dataset_check,
                ),
            ),
        ),
        Command(
            "record",
            "record demonstrations into a LeRobotDataset: record metaworld --env.task=... --dataset.root=DIR",
            subcommands=(
                Command(
                    "metaworld",
                    "Meta-World's scripted experts, successful episodes only",
                    RecordPipelineConfig,
                    _run_record,
                    renames={
                        "--tasks": "--env.task",
                        "--difficulty": "--env.task",
                        "--episodes": "--dataset.num_episodes",
                        "--image-size": "--env.image_size",
                        "--output": "--dataset.root",
                        "--workers": "--num_workers",
                        "--max-episode-steps": "--env.max_episode_steps",
                        "--video-codec": "--dataset.video_codec",
                    },
                ),
            ),
        ),
        Command(
            "serve",
            "serve a policy over WebSocket (openpi's protocol): --policy.path=DIR --port=8000",
            ServeConfig,
            _run_serve,
            renames={
                "--max-message-mb": "--max_message_mb",
                "--idle-timeout": "--idle_timeout",
                "--log-level": "--log_level",
                "--api-key-env": "--api_key_env",
                "--rtc": "--rtc.enabled=true",
            },
        ),
        Command(
            "export",
            "a checkpoint to ONNX (prefix and step graphs, int8 forms) for ONNX Runtime, OpenVINO, TensorRT",
            ExportPipelineConfig,
            _run_export,
        ),
        Command(
            "merge",
            "fold a LoRA adapter into its base checkpoint: --policy.path=ADAPTER --output_dir=DIR",
            tools.MergeConfig,
            tools.run_merge,
        ),
        Command(
            "deploy",
            "drive the Meta-World robot through the server in real time: deploy sim --mode sync async",
            subcommands=(
                Command(
                    "sim",
                    "the Meta-World robot, driven by the robot client against a policy server",
                    deploy.DeployConfig,
                    deploy.run_command,
                    renames={"--episodes": "--n_episodes", "--video": "--video=true"},
                ),
            ),
        ),
        Command(
            "robot-client",
            "drive a robot (LeRobot's drivers: SO-100/101, Koch, ...) with a policy server, LeRobot's flags",
            robot_client.RobotClientCommandConfig,
            robot_client.run,
            epilog=robot_client.robot_help,
        ),
        Command(
            "info",
            "describe a checkpoint or an export; --speed=true: what auto picks here",
            tools.InfoConfig,
            tools.run_info,
            renames={"--json": "--json=true"},
            positional="policy.path",
        ),
        Command(
            "demo",
            "run a policy on a sample observation and print its action chunk",
            tools.DemoConfig,
            tools.run_demo,
        ),
    )


# --------------------------------------------------------------------------------------------------
# Parsing


def _resolve(argv: list[str]) -> tuple[Command, str, list[str]]:
    """The command argv names, its full name ("dataset info") and the rest of argv."""
    if not argv or argv[0].startswith("-"):
        raise UsageError("expected a command; see `smolvla --help`")
    registry = {c.name: c for c in commands()}
    if argv[0] not in registry:
        close = difflib.get_close_matches(argv[0], list(registry), 1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"unknown command {argv[0]!r}{hint}; see `smolvla --help`")
    cmd, name, rest = registry[argv[0]], argv[0], argv[1:]
    while cmd.subcommands and rest and not rest[0].startswith("-"):
        cmd, name, rest = cmd.sub(rest[0]), f"{name} {rest[0]}", rest[1:]
    return cmd, name, rest


def _wants_help(rest: list[str]) -> bool:
    return any(a in ("-h", "--help") for a in rest)


def _build(cmd: Command, name: str, rest: list[str]) -> Any:
    if cmd.subcommands:
        names = "|".join(c.name for c in cmd.subcommands)
        raise UsageError(f"expected a subcommand: smolvla {name} {names}")
    assert cmd.config is not None
    if cmd.positional and rest and not rest[0].startswith("-"):
        print(
            f"smolvla {name}: a positional {rest[0]!r} is deprecated, use --{cmd.positional}={rest[0]}",
            file=sys.stderr,
        )
        rest = [f"--{cmd.positional}={rest[0]}", *rest[1:]]
    argv = flags.normalize(flags.rename(rest, cmd.renames, name), cmd.config, name)
    if cmd.prepare is not None:
        argv = cmd.prepare(argv)
    return flags.parse_config(cmd.config, argv, f"smolvla {name}")


def parse(argv: list[str]) -> tuple[str, Any]:
    """(command name, its config) for a command line, without running anything (`--help` excepted:
    it has nothing to build, so it raises UsageError)."""
    cmd, name, rest = _resolve(list(argv))
    if _wants_help(rest):
        raise UsageError("--help builds no config")
    return name, _build(cmd, name, rest)


def help_text(argv: list[str]) -> str:
    """`smolvla [command [subcommand]] --help`."""
    words = [a for a in argv if not a.startswith("-")]
    if not words:
        width = max(len(c.name) for c in commands())
        lines = [f"  {c.name:<{width}}  {c.summary}" for c in commands()]
        return (
            "usage: smolvla <command> [--flag=value ...]   (smolvla <command> --help: its flags)\n\n"
            "SmolVLA: record, train, evaluate, serve and benchmark VLA policies.\n\ncommands:\n"
            + "\n".join(lines)
            + "\n\nEvery command accepts --config_path=FILE.json; flags given beside it override the file.\n"
        )
    cmd, name, _ = _resolve(words[:1] + [a for a in argv[1:] if not a.startswith("-")][:1])
    if cmd.subcommands:
        width = max(len(c.name) for c in cmd.subcommands)
        lines = [f"  {c.name:<{width}}  {c.summary}" for c in cmd.subcommands]
        return f"usage: smolvla {name} <subcommand> [--flag=value ...]\n\n{cmd.summary}\n\n" + "\n".join(
            lines
        )
    assert cmd.config is not None
    notes = cmd.epilog(argv) if callable(cmd.epilog) else cmd.epilog
    if cmd.renames or cmd.positional:
        old = [f"{k} -> {v}" for k, v in cmd.renames.items() if k != v]
        if cmd.positional:
            old.append(f"positional argument -> --{cmd.positional}")
        notes += "\n\nDeprecated spellings (still accepted): " + ", ".join(old)
    return flags.help_text(cmd.config, f"smolvla {name}", cmd.summary, notes.strip())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text([]))
        return 0 if argv else 2
    name = argv[0]
    try:
        cmd, name, rest = _resolve(argv)
        if _wants_help(rest):
            print(help_text(argv))
            return 0
        cfg = _build(cmd, name, rest)
        assert cmd.run is not None
        cmd.run(cfg)
    except SmolVLAError as e:  # bad input, explained in the message: one line, no traceback
        print(f"smolvla {name}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
