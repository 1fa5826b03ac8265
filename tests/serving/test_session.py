"""The robot session against a real policy server on loopback, with the fake arm (duck-typed, no LeRobot):
actions reach the motors through the limits, a late or killed server makes the arm hold, Ctrl-C and
SIGTERM disconnect, and the rollout reads back as a dataset."""

from __future__ import annotations

import _thread
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from smolvla.config import ConfigError
from smolvla.serving.client import PolicyClient, RobotClientConfig
from smolvla.serving.mapping import MappingError
from smolvla.serving.safety import SafetyConfig
from smolvla.serving.server import InferenceEngine, PolicyServer, ServerConfig, ServerThread
from smolvla.serving.session import RobotSession, SessionConfig
from tests.serving.conftest import ARM_MAX, ARM_MIN
from tests.serving.fake_arm import FakeArmCore

RENAME = {
    "observation.images.front": "observation.images.camera1",
    "observation.images.wrist": "observation.images.camera2",
}
START = (0.0, -45.0, 30.0, 0.0, 0.0, 50.0)


def config(tmp_path, **kw) -> SessionConfig:
    client = RobotClientConfig(task="pick up the cube", fps=kw.pop("fps", 40), similarity_atol=0)
    return SessionConfig(client=client, rename_map=RENAME, output_dir=str(tmp_path / "out"), **kw)


def serve(ckpt, port: int = 0, latency: float = 0.0) -> ServerThread:
    engine = InferenceEngine.load(str(ckpt), latency=latency)
    return ServerThread(PolicyServer(engine, ServerConfig(port=port, idle_timeout=30)))


def check_limits(goals: np.ndarray, start: tuple, max_step: float, margin: float = 0.05) -> None:
    lo, hi = np.array(ARM_MIN), np.array(ARM_MAX)
    pad = margin * (hi - lo)
    assert np.all(goals >= lo - pad - 1e-4) and np.all(goals <= hi + pad + 1e-4)
    steps = np.abs(np.diff(np.vstack([start, goals]), axis=0))
    assert steps.max() <= max_step + 1e-4


def test_session_drives_the_arm_and_records_the_rollout(arm_ckpt, tmp_path):
    arm = FakeArmCore(start=START)
    with serve(arm_ckpt) as st:
        cfg = config(
            tmp_path, episode_time_s=1.5, num_episodes=2, reset_time_s=0.1, dataset=str(tmp_path / "ds")
        )
        report = RobotSession(arm, lambda: PolicyClient(st.url), cfg).run()
    assert report["stop"] == "completed" and len(report["episodes"]) == 2
    kinds = [e["kind"] for e in arm.events]
    assert kinds[0] == "connect" and kinds[-1] == "disconnect" and kinds.count("connect") == 1
    assert arm.events[-1]["torque"] is False  # the driver's default: torque off on disconnect
    goals = arm.goals()
    assert len(goals) == sum(e["executed"] for e in report["episodes"]) > 20
    check_limits(goals, START, 10.0)  # the random policy's actions were clamped into range, in steps
    ep = json.loads((tmp_path / "out" / "episode_000.json").read_text())
    assert ep["safety"]["actions_clamped"] > 0 and ep["chunks"] >= 2
    assert ep["queue"]["max"] <= 10 and ep["tick_work_ms"]["p50"] is not None
    assert ep["inference_latency_ms"]["p50"] > 0 and ep["dataset_episode"] == 0
    assert (tmp_path / "out" / "episode_001.png").stat().st_size > 0
    assert report["mapping"]["cameras"] == {
        "front": "observation.images.camera1",
        "wrist": "observation.images.camera2",
    }

    from smolvla.data import LeRobotDataset
    from smolvla.data.tools import show

    ds = LeRobotDataset(str(tmp_path / "ds"), chunk_size=1)
    assert ds.meta.total_episodes == 2
    assert ds.meta.total_frames == sum(e["ticks"] for e in report["episodes"])
    first = ds[0]
    assert first["observation.state"].tolist() == list(START)  # the arm before any action
    assert first["observation.images.front"].shape[-2:] == (24, 32)
    # each frame's action is the goal in effect at that tick: the last one sent, in the motors' order
    n0 = report["episodes"][0]["ticks"]
    last = ds[n0 - 1]["action"].reshape(-1).numpy()
    sent0 = report["episodes"][0]["executed"]
    assert np.allclose(last, goals[sent0 - 1], atol=1e-4)
    mp4, png = show(tmp_path / "ds", 1, tmp_path / "ep1.mp4")
    assert mp4.stat().st_size > 0 and png.stat().st_size > 0


def test_a_mismatch_is_refused_before_the_arm_connects(arm_ckpt, tmp_path):
    arm = FakeArmCore(start=START)
    with serve(arm_ckpt) as st:
        meta = PolicyClient(st.url).metadata  # what the session checks and limits with
        assert meta["action_range"] == {"min": ARM_MIN, "max": ARM_MAX}
        assert meta["device"] == "cpu" and meta["policy_path"] == str(arm_ckpt)
        cfg = SessionConfig(client=RobotClientConfig(task="x"), output_dir=str(tmp_path))  # no rename map
        with pytest.raises(MappingError, match="--rename_map="):
            RobotSession(arm, lambda: PolicyClient(st.url), cfg).run()
        with pytest.raises(ConfigError, match="but the server serves"):
            RobotSession(arm, lambda: PolicyClient(st.url), config(tmp_path, expect_policy="me/other")).run()
        with pytest.raises(ConfigError, match="runs the policy on 'cpu'"):
            RobotSession(arm, lambda: PolicyClient(st.url), config(tmp_path, expect_device="cuda")).run()
        ok = config(tmp_path, expect_policy=str(arm_ckpt), expect_device="cpu", episode_time_s=0.2)
        assert (
            RobotSession(FakeArmCore(start=START), lambda: PolicyClient(st.url), ok).run()["stop"]
            == "completed"
        )
    assert not arm.events


def test_a_late_server_makes_the_arm_hold(arm_ckpt, tmp_path):
    arm = FakeArmCore(start=START)
    with serve(arm_ckpt, latency=0.6) as st:
        cfg = config(tmp_path, episode_time_s=2.0, safety=SafetyConfig(server_timeout_s=0.3))
        report = RobotSession(arm, lambda: PolicyClient(st.url), cfg).run()
    ep = report["episodes"][0]
    assert len(arm.goals()) == 0 == ep["executed"]  # every answer came too late: nothing stale ran
    assert ep["holds"] >= 2 and ep["late_discarded"] >= 1 and ep["server_waits"] == ep["ticks"]


def test_a_killed_server_makes_the_arm_hold_until_it_is_back(arm_ckpt, tmp_path):
    arm = FakeArmCore(start=START)
    st = serve(arm_ckpt).start()
    port = st.server.port
    cfg = config(tmp_path, episode_time_s=5.0)
    marks: dict[str, float] = {}

    def kill_and_restart() -> None:
        time.sleep(1.0)
        st.stop()
        marks["killed"] = time.time()
        time.sleep(2.0)
        marks["back"] = time.time()
        marks["server"] = serve(arm_ckpt, port=port).start()  # type: ignore[assignment]

    t = threading.Thread(target=kill_and_restart)
    t.start()
    try:
        report = RobotSession(arm, lambda: PolicyClient(f"ws://127.0.0.1:{port}"), cfg).run()
    finally:
        t.join()
        marks["server"].stop()  # type: ignore[union-attr]
    ep = report["episodes"][0]
    assert ep["reconnects"] == 1 and ep["stop"] == "time limit"
    times = np.array([e["t"] for e in arm.events if e["kind"] == "goal"])
    # after the kill, at most what was queued runs (10 actions at 40 fps: 0.25 s), then nothing until back
    held = times[(times > marks["killed"] + 0.5) & (times < marks["back"])]
    assert held.size == 0
    assert np.sum(times > marks["back"]) > 10  # driven again after the reconnect
    check_limits(arm.goals(), START, 10.0)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_stop_and_disconnect(arm_ckpt, tmp_path, how):
    # Python's own Ctrl-C handler, also when the test runner was started with SIGINT ignored (nohup)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_and_sigterm(arm_ckpt, tmp_path, how)
    finally:
        signal.signal(signal.SIGINT, old)


def _ctrl_c_and_sigterm(arm_ckpt, tmp_path, how: str) -> None:
    arm = FakeArmCore(start=START)
    with serve(arm_ckpt) as st:
        cfg = config(tmp_path, episode_time_s=30.0, dataset=str(tmp_path / "ds"))

        def stop() -> None:
            time.sleep(1.0)
            if how == "ctrl-c":
                _thread.interrupt_main()
            else:
                os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=stop, daemon=True).start()
        t0 = time.monotonic()
        report = RobotSession(arm, lambda: PolicyClient(st.url), cfg).run()
    assert time.monotonic() - t0 < 10
    assert report["stop"] == "interrupted" and report["episodes"][0]["stop"] == "interrupted"
    assert arm.events[-1] == {**arm.events[-1], "kind": "disconnect", "torque": False}
    assert report["episodes"][0]["dataset_episode"] == 0  # what ran until the stop is kept
    assert signal.getsignal(signal.SIGTERM) is not None


def test_the_robot_side_runs_without_torch(arm_ckpt, tmp_path):
    """The robot's computer needs no torch: a whole session, recording included, in an interpreter where
    importing torch fails, against the server in this one."""
    import subprocess
    import sys

    from tests.conftest import REPO

    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch now raises
from smolvla.apps.robot_client import RobotClientCommandConfig
from smolvla.serving.client import PolicyClient, RobotClientConfig
from smolvla.serving.session import RobotSession, SessionConfig
from tests.serving.fake_arm import FakeArmCore
cfg = SessionConfig(
    client=RobotClientConfig(task="pick up the cube", fps=30),
    rename_map={RENAME!r},
    episode_time_s=1.0,
    output_dir={str(tmp_path / "out")!r},
    dataset={str(tmp_path / "ds")!r},
)
report = RobotSession(FakeArmCore(start={START!r}), lambda: PolicyClient(URL), cfg).run()
assert report["episodes"][0]["executed"] > 0, report
print("ok")
"""
    with serve(arm_ckpt) as st:
        r = subprocess.run(
            [sys.executable, "-c", f"URL = {st.url!r}\n{code}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_a_driver_failure_disconnects_and_keeps_the_frames(arm_ckpt, tmp_path):
    class FailingArm(FakeArmCore):
        def send_action(self, action):
            if len(self.goals()) == 15:
                raise OSError("[Errno 5] Input/output error: the motor bus")
            return super().send_action(action)

    arm = FailingArm(start=START)
    with serve(arm_ckpt) as st:
        cfg = config(tmp_path, episode_time_s=10.0, dataset=str(tmp_path / "ds"))
        with pytest.raises(OSError, match="motor bus"):
            RobotSession(arm, lambda: PolicyClient(st.url), cfg).run()
    assert arm.events[-1] == {**arm.events[-1], "kind": "disconnect", "torque": False}
    info = json.loads((tmp_path / "ds" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 1 and info["total_frames"] >= 15
    session = json.loads((tmp_path / "out" / "session.json").read_text())
    assert session["stop"] == "error: OSError: [Errno 5] Input/output error: the motor bus"


def test_the_step_limit_counts_from_the_goal_the_driver_wrote():
    from smolvla.serving.mapping import PolicyFeatures, RobotFeatures, check_mapping
    from smolvla.serving.safety import ActionGuard
    from smolvla.serving.session import MappedRobot

    arm = FakeArmCore(start=(0.0,) * 6, max_relative_target=2.0)  # the driver caps at 2 per goal
    policy = PolicyFeatures(
        {"observation.images.camera1": (24, 32), "observation.images.camera2": (24, 32)}, 6, 6
    )
    mapping = check_mapping(RobotFeatures.of(arm), policy, RENAME)
    guard = ActionGuard(mapping.robot.action, max_step=5.0)
    robot = MappedRobot(arm, mapping, guard)
    arm.connect()
    guard.reset(mapping.joint_positions(robot.observe()))
    assert robot.send_action(np.full(6, 10.0)).tolist() == [2.0] * 6  # ours let 5 through, the driver 2
    assert guard.goal.tolist() == [2.0] * 6  # so the next step is measured from 2, not 5
    assert robot.send_action(np.full(6, 10.0)).tolist() == [4.0] * 6
