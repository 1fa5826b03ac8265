"""`smolvla deploy sim`: the measurements and the command end to end (short episodes)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco: headless rendering

import numpy as np
import pytest

from smolvla.apps.deploy import boundary_jumps, parse_latency, parse_variants
from smolvla.serving.client import TimedAction


def test_boundary_jumps_separate_chunk_switches_from_steps_inside():
    acts = [0.0, 0.1, 0.2, 1.2, 1.3, 1.4]
    chunks = [0, 0, 0, 1, 1, 1]
    log = [TimedAction(i, np.array([a]), c) for i, (a, c) in enumerate(zip(acts, chunks, strict=True))]
    log[3] = TimedAction(3, np.array([1.2]), 1, replaced=np.array([0.3]))  # the old chunk planned 0.3
    out = boundary_jumps(log)
    assert out["boundaries"] == 1
    assert out["boundary_jump"] == pytest.approx(1.0) and out["inside_step"] == pytest.approx(0.1)
    assert out["switch_gap"] == pytest.approx(0.9) == out["switch_gap_max"]
    assert boundary_jumps([])["boundary_jump"] is None


def test_argument_errors_name_the_flag():
    assert parse_variants("sync, async+rtc") == ["sync", "async+rtc"]
    with pytest.raises(ValueError, match="--mode: got 'fast'"):
        parse_variants("fast")
    assert parse_latency("auto") == 0.0 and parse_latency("1.5") == 1.5
    with pytest.raises(ValueError, match="--latency: got '-1'"):
        parse_latency("-1")
    with pytest.raises(ValueError, match="--latency: got 'slow'"):
        parse_latency("slow")


def test_deploy_sim_end_to_end(tiny_ckpt, tmp_path, capsys):
    pytest.importorskip("metaworld")
    from smolvla.apps.cli import main
    from smolvla.model.rtc import RTCConfig
    from smolvla.serving.server import InferenceEngine, PolicyServer, ServerConfig, ServerThread

    # An in-process server (`--server`) keeps the test fast; `smolvla serve` as a process is tested
    # in test_server.py.
    engine = InferenceEngine.load(str(tiny_ckpt), rtc=RTCConfig(), latency=0.02)
    with ServerThread(PolicyServer(engine, ServerConfig(port=0))) as st:
        argv = [
            "deploy", "sim", f"--policy.path={tiny_ckpt}", "--env.task=drawer-close-v3",
            "--env.max_episode_steps", "12", "--n_episodes=1", "--mode", "sync,async,async+rtc",
            "--fps", "100", "--server", st.url, "--output_dir", str(tmp_path),
        ]  # fmt: skip
        assert main(argv) == 0
    report = json.loads((tmp_path / "deploy_report.json").read_text())
    assert set(report["summary"]) == {"sync", "async", "async+rtc"}
    for variant, rows in report["episodes"].items():
        (row,) = rows
        assert row["steps"] == 12 or (row["success"] and row["steps"] < 12), variant  # ran to its end
        assert row["chunks"] >= 1, variant
        assert row["actions_per_s"] > 0 and 0 <= row["waiting_fraction"] <= 1
    assert "| async+rtc |" in capsys.readouterr().out
