"""`smolvla robot-client`: a robot LeRobot has a driver for, driven by `smolvla serve`, with LeRobot's
robot-client flags.

    smolvla serve --policy.path=USER/ckpt --port=8080
    smolvla robot-client --server_address=127.0.0.1:8080 --robot.type=so101_follower \\
        --robot.port=/dev/ttyACM0 --robot.id=my_arm \\
        --robot.cameras="{ front: {type: opencv, index_or_path: 0, width: 640, height: 480, fps: 30}}" \\
        --task="pick up the cube" --rename_map='{"observation.images.front": "observation.images.camera1"}'

`--robot.*` goes to LeRobot's own `RobotConfig` classes (draccus, as `lerobot-record` parses it), and the
robot comes from LeRobot's `make_robot_from_config`; third-party `lerobot_robot_*` packages and
`--robot.discover_packages_path=PKG` register more types, as in LeRobot. LeRobot is this command's
optional dependency (`pip install 'smolvla[lerobot]'`); the rest of the client imports no torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import logging
import pkgutil
import sys
from dataclasses import dataclass, field
from typing import Any

from smolvla.apps import flags
from smolvla.apps.flags import UsageError
from smolvla.serving.client import AGGREGATE_FUNCTIONS, PolicyClient, RobotClientConfig
from smolvla.serving.mapping import parse_rename_map
from smolvla.serving.protocol import api_key_from_env
from smolvla.serving.safety import SafetyConfig
from smolvla.serving.session import RobotSession, SessionConfig

PLUGIN_FLAG = "discover_packages_path"  # LeRobot's: --robot.discover_packages_path=PKG imports PKG first
INSTALL_HINT = (
    "driving a robot through LeRobot's drivers needs LeRobot in this environment: "
    "pip install 'smolvla[lerobot]' (for an arm LeRobot has no driver for, see the README's robot plugin)"
)


@dataclass(frozen=True)
class RobotClientDatasetConfig:
    # a folder to record the rollouts into, as a LeRobotDataset v3 (None: no recording)
    repo_id: str | None = None
    video_codec: str | None = None  # h264 (the default) or libsvtav1


@dataclass(frozen=True)
class RobotClientCommandConfig:
    """A LeRobot robot driven by a policy server, with LeRobot's robot-client flags."""

    # LeRobot's robot flags, --robot.type=so101_follower --robot.port=... (parsed by LeRobot's RobotConfig)
    robot: dict[str, Any] = field(default_factory=dict, metadata=flags.PASSTHROUGH_FLAGS)
    server_address: str = "localhost:8000"  # the `smolvla serve` to ask: host:port or ws://host:port
    task: str = ""  # the instruction given to the policy
    fps: float = 30.0  # the control loop's rate: actions sent per second
    chunk_size_threshold: float = 0.5  # ask for a new chunk when this fraction of the last one is left
    # how overlapping chunks merge: weighted_average, latest_only, average, conservative
    aggregate_fn_name: str = "weighted_average"
    actions_per_chunk: int | None = None  # actions of each chunk to use (None: all of them)
    # LeRobot's: robot camera keys to the policy's, {"observation.images.front": "observation.images.camera1"}
    rename_map: dict[str, str] = field(default_factory=dict)
    policy_type: str | None = None  # LeRobot's; the server serves SmolVLA, so only "smolvla" is accepted
    pretrained_name_or_path: str | None = None  # LeRobot's; refused unless it is what the server serves
    policy_device: str | None = None  # LeRobot's; refused unless it is the server's device
    client_device: str = "cpu"  # LeRobot's; actions are numpy arrays here, so only "cpu" is accepted
    debug_visualize_queue_size: bool = True  # write each episode's action-queue and tick-time plot (PNG)
    similarity_atol: float = 0.01  # observations closer than this (normalized state, L2) are not sent again
    episode_time_s: float = 60.0  # each episode ends after this long: no more actions, the arm holds
    num_episodes: int = 1  # episodes to run, with --reset_time_s between them
    reset_time_s: float = 10.0  # seconds between episodes for a person to reset the scene (the arm holds)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    dataset: RobotClientDatasetConfig = field(default_factory=RobotClientDatasetConfig)
    output_dir: str = "outputs/robot_client"  # session.json, one JSON and PNG per episode
    api_key_env: str | None = None  # environment variable holding the server's API key, if it needs one
    log_level: str = "INFO"  # DEBUG, INFO, WARNING, ERROR (on stderr)


# --------------------------------------------------------------------------------------------------
# The robot, through LeRobot


def _import_all(package: str) -> list[str]:
    """Imports every subpackage of a LeRobot package (each registers its config types); returns the ones
    whose optional dependencies are missing, to name them if the user asks for one."""
    pkg = importlib.import_module(package)
    failed = []
    for info in pkgutil.iter_modules(pkg.__path__, f"{package}."):
        try:
            importlib.import_module(info.name)
        except ImportError as e:
            failed.append(f"{info.name.rsplit('.', 1)[-1]} ({e.name or e} missing)")
        except Exception as e:  # a driver that fails at import is named, not fatal to the others
            failed.append(f"{info.name.rsplit('.', 1)[-1]} ({type(e).__name__}: {e})")
    return failed


def lerobot_robot_config(robot_flags: dict[str, Any], prog: str = "smolvla robot-client") -> Any:
    """LeRobot's `RobotConfig` from `--robot.*` flags, parsed by draccus as LeRobot parses them."""
    if importlib.util.find_spec("lerobot") is None:
        raise UsageError(f"--robot.type: {INSTALL_HINT}")
    from lerobot.configs.parser import load_plugin
    from lerobot.robots import RobotConfig
    from lerobot.utils.import_utils import register_third_party_plugins

    robot_flags = dict(robot_flags)
    plugin = robot_flags.pop(PLUGIN_FLAG, None)
    if plugin:
        try:
            load_plugin(str(plugin))
        except Exception as e:
            raise UsageError(f"--robot.{PLUGIN_FLAG}: {e}") from None
    register_third_party_plugins()
    missing = _import_all("lerobot.robots") + _import_all("lerobot.cameras")
    known = sorted(RobotConfig.get_known_choices())
    kind = robot_flags.get("type")
    if not kind:
        raise UsageError(f"--robot.type is required: one of {known}")
    if kind not in known:
        extra = f"; not importable here: {missing}" if missing else ""
        raise UsageError(f"--robot.type: got {kind!r}, expected one of {known}{extra}")
    wrapper = dataclasses.make_dataclass("LeRobotRobotFlags", [("robot", RobotConfig)])
    args = [f"--robot.{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in robot_flags.items()]
    return flags.parse_config(wrapper, args, prog).robot


def lerobot_robot(robot_flags: dict[str, Any]) -> Any:
    """The robot LeRobot's `make_robot_from_config` builds from `--robot.*` (not connected yet)."""
    config = lerobot_robot_config(robot_flags)
    from lerobot.robots import make_robot_from_config

    return make_robot_from_config(config)


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f" (default: {f.default!r})"
    if f.default_factory is not dataclasses.MISSING:
        return f" (default: {f.default_factory()!r})"
    return " (required)"


def robot_help(argv: list[str]) -> str:
    """The `--robot.*` part of `--help`: LeRobot's robot types here, and with `--robot.type=X` its flags."""
    head = (
        "--robot.<field>=VALUE: LeRobot's robot config, parsed by LeRobot's own RobotConfig classes "
        "(--robot.type=so101_follower --robot.port=/dev/ttyACM0 --robot.id=my_arm --robot.cameras=...);\n"
        f"--robot.{PLUGIN_FLAG}=PKG imports a plugin package that registers more robot types."
    )
    if importlib.util.find_spec("lerobot") is None:
        return f"{head}\n\n{INSTALL_HINT}."
    kind = next((a.split("=", 1)[1] for a in argv if a.startswith("--robot.type=")), None)
    try:
        from lerobot.robots import RobotConfig

        plugins = {a.split("=", 1)[1] for a in argv if a.startswith(f"--robot.{PLUGIN_FLAG}=")}
        if plugins:
            from lerobot.configs.parser import load_plugin

            for p in plugins:
                load_plugin(p)
        _import_all("lerobot.robots")
        _import_all("lerobot.cameras")
        known = sorted(RobotConfig.get_known_choices())
        text = f"{head}\n\nrobot types here (LeRobot): {', '.join(known)}"
        if kind in known:
            cls = RobotConfig.get_choice_class(kind)
            fields = [f"  --robot.{f.name}{_default(f)}" for f in dataclasses.fields(cls) if f.init]
            text += f"\n\n--robot.type={kind} ({cls.__name__}) takes:\n" + "\n".join(fields)
        return text
    except Exception as e:  # help must not fail because a plugin is broken; it says so instead
        return f"{head}\n\n(LeRobot's robot types could not be listed: {type(e).__name__}: {e})"


# --------------------------------------------------------------------------------------------------
# The command


def session_config(cfg: RobotClientCommandConfig) -> SessionConfig:
    """The library's session config from the command's flags (checking LeRobot's compatibility flags)."""
    if cfg.policy_type not in (None, "smolvla"):
        raise UsageError(
            f"--policy_type: got {cfg.policy_type!r}; `smolvla serve` serves SmolVLA, expected smolvla"
        )
    if cfg.client_device != "cpu":
        raise UsageError(
            f"--client_device: got {cfg.client_device!r}, expected cpu (the client handles actions as numpy "
            "arrays; "
            "the policy's device is the server's --policy.device)"
        )
    if cfg.aggregate_fn_name not in AGGREGATE_FUNCTIONS:
        raise UsageError(
            f"--aggregate_fn_name: got {cfg.aggregate_fn_name!r}, expected one of {list(AGGREGATE_FUNCTIONS)}"
        )
    client = RobotClientConfig(
        task=cfg.task,
        fps=cfg.fps,
        chunk_size_threshold=cfg.chunk_size_threshold,
        aggregate_fn_name=cfg.aggregate_fn_name,
        similarity_atol=cfg.similarity_atol,
        actions_per_chunk=cfg.actions_per_chunk,
    )
    return SessionConfig(
        client=client,
        safety=cfg.safety,
        rename_map=parse_rename_map(cfg.rename_map),
        episode_time_s=cfg.episode_time_s,
        num_episodes=cfg.num_episodes,
        reset_time_s=cfg.reset_time_s,
        output_dir=cfg.output_dir,
        dataset=cfg.dataset.repo_id,
        video_codec=cfg.dataset.video_codec,
        queue_plot=cfg.debug_visualize_queue_size,
        expect_policy=cfg.pretrained_name_or_path,
        expect_device=cfg.policy_device,
    )


def run(cfg: RobotClientCommandConfig) -> dict[str, Any]:
    logging.basicConfig(
        level=cfg.log_level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    session_cfg = session_config(cfg)
    if not cfg.robot:
        raise UsageError("--robot.type is required (LeRobot's robot config: --robot.type=so101_follower ...)")
    api_key = api_key_from_env(cfg.api_key_env)
    robot = lerobot_robot(cfg.robot)
    session = RobotSession(robot, lambda: PolicyClient(cfg.server_address, api_key=api_key), session_cfg)
    report = session.run()
    print(summary(report, cfg.output_dir))
    if report["stop"] == "interrupted":
        raise SystemExit(130)  # the shell's code for Ctrl-C, after a clean stop
    return report


def summary(report: dict[str, Any], output_dir: str) -> str:
    def f(v: Any, spec: str = ".1f") -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        "| episode | stop | s | ticks | actions | held ticks | tick work p50/p95 (ms) | period p95 (ms) "
        "| queue p50 (min-max) | inference p50/p95 (ms) | clamped | holds | reconnects |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["episodes"]:
        w, p, q, lat = e["tick_work_ms"], e["tick_period_ms"], e["queue"], e["inference_latency_ms"]
        lines.append(
            f"| {e['episode']} | {e['stop']} | {e['seconds']:.1f} | {e['ticks']} | {e['executed']} "
            f"| {e['server_waits']} | {f(w['p50'])}/{f(w['p95'])} | {f(p['p95'])} "
            f"| {f(q['p50'], '.0f')} ({f(q['min'], 'd')}-{f(q['max'], 'd')}) "
            f"| {f(lat['p50'], '.0f')}/{f(lat['p95'], '.0f')} "
            f"| {e['safety']['actions_clamped']} | {e['holds']} | {e['reconnects']} |"
        )
    lines.append(f"stop: {report['stop']}; report: {output_dir}/session.json")
    if report.get("dataset"):
        lines.append(
            f"recorded into {report['dataset']} (smolvla dataset show --dataset.repo_id={report['dataset']})"
        )
    return "\n".join(lines)
