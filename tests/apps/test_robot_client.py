"""`smolvla robot-client`'s command line: LeRobot's flags, `--robot.*` passed through to LeRobot's own
config classes, and what happens without LeRobot installed (the project's CI has none)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from smolvla.apps import cli, flags
from smolvla.apps.flags import UsageError
from smolvla.apps.robot_client import RobotClientCommandConfig, session_config

LEROBOT = importlib.util.find_spec("lerobot") is not None
SO101 = [
    "--server_address=127.0.0.1:8080",
    "--robot.type=so101_follower",
    "--robot.port=/dev/ttyACM0",
    "--robot.id=my_arm",
    "--robot.cameras={ front: {type: opencv, index_or_path: 0, width: 640, height: 480, fps: 30}}",
    "--task=pick up the cube",
    "--policy_type=smolvla",
    "--pretrained_name_or_path=USER/ckpt",
    "--actions_per_chunk=50",
    "--chunk_size_threshold=0.5",
    "--aggregate_fn_name=weighted_average",
    '--rename_map={"observation.images.front": "observation.images.camera1"}',
]


def test_lerobots_command_line_parses():
    name, cfg = cli.parse(["robot-client", *SO101])
    assert name == "robot-client" and isinstance(cfg, RobotClientCommandConfig)
    assert cfg.robot == {
        "type": "so101_follower",
        "port": "/dev/ttyACM0",
        "id": "my_arm",
        "cameras": "{ front: {type: opencv, index_or_path: 0, width: 640, height: 480, fps: 30}}",
    }
    assert cfg.rename_map == {"observation.images.front": "observation.images.camera1"}
    s = session_config(cfg)
    assert s.client.actions_per_chunk == 50 and s.client.task == "pick up the cube"
    assert s.expect_policy == "USER/ckpt" and s.rename_map == cfg.rename_map
    assert s.safety.max_step == 10.0 and s.safety.joint_limits  # safe by default


def test_passthrough_group_refuses_a_bare_group_and_a_missing_value():
    with pytest.raises(UsageError, match="give its fields one by one"):
        flags.normalize(['--robot={"type": "x"}'], RobotClientCommandConfig, "robot-client")
    with pytest.raises(UsageError, match=r"--robot\.port: expected one value"):
        flags.normalize(["--robot.port"], RobotClientCommandConfig, "robot-client")
    out = flags.normalize(["--robot.type=x", "--robot.max_relative_target=5"], RobotClientCommandConfig, "rc")
    assert out == [f"--robot={json.dumps({'type': 'x', 'max_relative_target': '5'})}"]


@pytest.mark.parametrize(
    ("flag", "match"),
    [
        ("--policy_type=act", "--policy_type: got 'act'"),
        ("--client_device=cuda", "--client_device: got 'cuda', expected cpu"),
        ("--aggregate_fn_name=median", "--aggregate_fn_name: got 'median'"),
        ("--safety.max_step=-2", "safety.max_step: got -2"),
        ("--episode_time_s=0", "episode_time_s: got 0"),
    ],
)
def test_bad_flags_name_the_flag(flag, match):
    with pytest.raises(Exception, match=match):
        session_config(cli.parse(["robot-client", flag])[1])


def test_help_answers_with_or_without_lerobot(capsys):
    assert cli.main(["robot-client", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--safety.max_step" in out and "--robot.<field>=VALUE" in out
    assert ("pip install 'smolvla[lerobot]'" in out) != LEROBOT


@pytest.mark.skipif(LEROBOT, reason="checks the message given when LeRobot is not installed")
def test_without_lerobot_the_robot_flags_say_how_to_install_it(capsys):
    assert cli.main(["robot-client", *SO101]) == 2
    err = capsys.readouterr().err
    assert "smolvla robot-client: error: --robot.type: driving a robot through LeRobot's drivers" in err
    assert "pip install 'smolvla[lerobot]'" in err
