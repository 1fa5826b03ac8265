"""`smolvla robot-client` in LeRobot's interpreter, driving a robot LeRobot builds: the fake arm registered
through LeRobot's `RobotConfig` registry (`smolvla_fake_robot`, loaded with LeRobot's
`--robot.discover_packages_path`), against `smolvla serve` on loopback (this interpreter's). The arm's
every goal is logged by the fake, so the test sees what reached the motors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from smolvla.apps.deploy import ServerProcess
from tests.serving.conftest import ARM_MAX, ARM_MIN, save_arm_checkpoint

ROOT = Path(__file__).resolve().parents[2]
START = [0.0, -45.0, 30.0, 0.0, 0.0, 50.0]
RENAME = json.dumps(
    {
        "observation.images.front": "observation.images.camera1",
        "observation.images.wrist": "observation.images.camera2",
    }
)


@pytest.fixture(scope="module")
def client_python(lerobot_python: str) -> str:
    code = "import msgpack, websockets, av, pyarrow"
    if subprocess.run([lerobot_python, "-c", code], capture_output=True).returncode != 0:
        pytest.skip(
            "LeRobot's interpreter lacks the robot client's packages: "
            f"{lerobot_python} -m pip install msgpack websockets av pyarrow matplotlib"
        )
    return lerobot_python


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    ckpt = save_arm_checkpoint(tmp_path_factory.mktemp("arm"))
    s = ServerProcess(str(ckpt), latency=0.0, rtc=False)
    yield s
    s.close()


def client_cmd(python: str, url: str, tmp: Path, *extra: str) -> list[str]:
    return [
        python,
        "-m",
        "smolvla.apps.cli",
        "robot-client",
        "--robot.type=smolvla_fake_arm",
        "--robot.discover_packages_path=smolvla_fake_robot",
        "--robot.id=test_arm",
        f"--robot.calibration_dir={tmp / 'calibration'}",
        f"--robot.log_path={tmp / 'motors.jsonl'}",
        f"--robot.start={json.dumps(START)}",
        f"--server_address={url}",
        "--task=pick up the cube",
        "--fps=30",
        f"--output_dir={tmp / 'out'}",
        *extra,
    ]


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), str(ROOT / "tests" / "interop")]),
    }


def motor_log(tmp: Path) -> list[dict]:
    f = tmp / "motors.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.is_file() else []


def goals(events: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    g = [e for e in events if e["kind"] == "goal"]
    return np.array([e["goal"] for e in g]).reshape(-1, 6), np.array([e["t"] for e in g])


def test_drives_a_lerobot_robot_within_the_limits_and_records(client_python, server, tmp_path):
    ds = tmp_path / "ds"
    cmd = client_cmd(
        client_python,
        server.url,
        tmp_path,
        f"--rename_map={RENAME}",
        "--episode_time_s=3",
        "--robot.max_relative_target=4.0",  # LeRobot's own driver limit, parsed by LeRobot's config class
        f"--dataset.repo_id={ds}",
        "--policy_type=smolvla",
    )
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "observation.state = ['shoulder_pan.pos', 'shoulder_lift.pos'" in r.stderr
    events = motor_log(tmp_path)
    assert events[0]["kind"] == "connect" and events[-1] == {
        **events[-1],
        "kind": "disconnect",
        "torque": False,
    }
    g, _ = goals(events)
    session = json.loads((tmp_path / "out" / "session.json").read_text())
    ep = session["episodes"][0]
    assert len(g) == ep["executed"] > 30 and ep["stop"] == "time limit"
    lo, hi = np.array(ARM_MIN), np.array(ARM_MAX)
    pad = 0.05 * (hi - lo)
    assert np.all(g >= lo - pad - 1e-4) and np.all(g <= hi + pad + 1e-4)
    assert np.abs(np.diff(np.vstack([START, g]), axis=0)).max() <= 4.0 + 1e-4  # the driver's limit acted
    assert ep["safety"]["actions_clamped"] > 0  # and ours: the random policy leaves the dataset's range

    # The rollout, read by LeRobot's own LeRobotDataset: the frames, state and executed goals
    check = (
        "import json, sys\n"
        "from lerobot.datasets.lerobot_dataset import LeRobotDataset\n"
        f"ds = LeRobotDataset('local/rollout', root={str(ds)!r})\n"
        "f0, fl = ds[0], ds[len(ds) - 1]\n"
        "print(json.dumps({'n': len(ds), 'state0': f0['observation.state'].tolist(),"
        " 'last_action': fl['action'].tolist(), 'task': f0['task'],"
        " 'front': list(f0['observation.images.front'].shape)}))\n"
    )
    out = subprocess.run([client_python, "-c", check], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["n"] == ep["ticks"] and got["task"] == "pick up the cube"
    assert np.allclose(got["state0"], START) and got["front"] == [3, 24, 32]
    assert np.allclose(got["last_action"], g[-1], atol=1e-4)


def test_a_mismatch_is_refused_before_the_robot_connects(client_python, server, tmp_path):
    r = subprocess.run(
        client_cmd(client_python, server.url, tmp_path), env=env(), capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "smolvla robot-client: error: the robot does not fit the policy" in r.stderr
    assert f"--rename_map='{RENAME}'" in r.stderr
    assert motor_log(tmp_path) == []  # never connected


def test_unknown_robot_type_lists_lerobots(client_python, server, tmp_path):
    cmd = client_cmd(client_python, server.url, tmp_path)
    cmd[cmd.index("--robot.type=smolvla_fake_arm")] = "--robot.type=so102_follower"
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    assert r.returncode == 2 and "--robot.type: got 'so102_follower', expected one of [" in r.stderr
    assert "'so101_follower'" in r.stderr and "'smolvla_fake_arm'" in r.stderr


def test_killed_server_holds_the_arm_and_ctrl_c_disconnects(client_python, tmp_path):
    ckpt = save_arm_checkpoint(tmp_path / "arm")
    server = ServerProcess(str(ckpt), latency=0.0, rtc=False)
    cmd = client_cmd(client_python, server.url, tmp_path, f"--rename_map={RENAME}", "--episode_time_s=60")
    proc = subprocess.Popen(
        cmd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C's default action in the client, even when this runner was started with SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 60
        while len(goals(motor_log(tmp_path))[0]) < 30:  # driving
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]  # type: ignore[union-attr]
            time.sleep(0.1)
        server.proc.kill()  # the server dies without a word
        killed = time.time()
        time.sleep(3.0)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()
    assert proc.returncode == 130, err[-3000:]
    events = motor_log(tmp_path)
    _, times = goals(events)
    # a chunk (10 actions at 30 fps: 0.33 s) may finish after the kill; then the arm holds, no goal at all
    assert np.sum(times > killed + 0.5) == 0
    assert events[-1] == {**events[-1], "kind": "disconnect", "torque": False}
    assert "server unreachable" in err and "holding position" in err and "stopped (Ctrl-C" in err
    session = json.loads((tmp_path / "out" / "session.json").read_text())
    assert session["stop"] == "interrupted" and session["episodes"][0]["reconnects"] == 1
