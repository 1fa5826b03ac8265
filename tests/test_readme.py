"""The README's Python example runs as written."""

from __future__ import annotations

import re

from tests.conftest import REPO


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert scope["chunk"].shape == (1, scope["config"].chunk_size, 4)
    assert scope["action"].shape == (1, 4)
    assert (tmp_path / "my_checkpoint" / "policy_preprocessor.json").is_file()
    assert (tmp_path / "my_checkpoint" / "model.safetensors").is_file()


def test_readme_robot_plugin_drives_through_a_server(tmp_path, monkeypatch):
    """The README's plugin for an arm LeRobot has no driver for: its `drive` runs a session against a
    real server, with a fake SDK bus standing in for the hardware."""
    import numpy as np

    from smolvla.serving.server import InferenceEngine, PolicyServer, ServerConfig, ServerThread
    from tests.serving.conftest import save_arm_checkpoint

    text = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "class MyArm(Robot)" in b)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)

    class Bus:  # the arm's SDK: joints that go where they are told, a camera
        def __init__(self) -> None:
            self.pos = dict.fromkeys((f"{j}.pos" for j in scope["MyArm"].joints), 0.0)
            self.goals: list[dict] = []
            self.open_ = False

        def open(self) -> None:
            self.open_ = True

        def close(self) -> None:
            self.open_ = False

        def read_positions(self) -> dict:
            return dict(self.pos)

        def read_frame(self) -> np.ndarray:
            return np.full((480, 640, 3), len(self.goals) % 256, np.uint8)

        def write_goals(self, goals: dict) -> dict:
            self.goals.append(goals)
            self.pos.update(goals)
            return goals

    ckpt = save_arm_checkpoint(tmp_path / "ckpt", cameras=1)
    monkeypatch.chdir(tmp_path)
    bus = Bus()
    with ServerThread(PolicyServer(InferenceEngine.load(str(ckpt)), ServerConfig(port=0))) as st:
        report = scope["drive"](bus, st.url, seconds=1.0)
    assert report["stop"] == "completed" and len(bus.goals) == report["episodes"][0]["executed"] > 5
    assert list(bus.goals[0]) == [f"{j}.pos" for j in scope["MyArm"].joints] and not bus.open_
    assert (tmp_path / "outputs" / "my_rollouts" / "meta" / "info.json").is_file()
