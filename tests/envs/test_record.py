"""The Meta-World recorder: successful expert episodes only, deterministic, readable as a dataset."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
pytest.importorskip("metaworld")

from smolvla.data import LeRobotDataset
from smolvla.envs.metaworld import INSTRUCTIONS
from smolvla.envs.record import RecordConfig, record


def test_record_two_tasks(tmp_path):
    cfg = RecordConfig(
        tasks=("reach-v3", "drawer-close-v3"), episodes=2, output=tmp_path / "a", image_size=32, workers=2
    )
    report = record(cfg, progress=False)
    assert report["episodes"] == 4
    ds = LeRobotDataset(tmp_path / "a", chunk_size=5)
    assert ds.num_episodes == 4 and ds.fps == 80
    tasks = [ds[ds.episode_bounds(i)[0]]["task"] for i in range(4)]
    assert tasks == [INSTRUCTIONS["reach-v3"]] * 2 + [INSTRUCTIONS["drawer-close-v3"]] * 2
    item = ds[0]
    assert item["observation.images.camera1"].shape == (3, 32, 32)
    assert item["observation.state"].shape == (4,) and item["action"].shape == (5, 4)
    saved = json.loads((tmp_path / "a" / "record_report.json").read_text())
    assert saved["tasks"]["reach-v3"]["episodes"] == 2 and saved["frames_per_second_per_worker"] > 0

    # the same config records the same episodes (seeds, states, actions), whatever the worker count
    again = record(
        RecordConfig(tasks=cfg.tasks, episodes=2, output=tmp_path / "b", image_size=32, workers=1),
        progress=False,
    )
    assert [again["tasks"][t]["seeds"] for t in cfg.tasks] == [report["tasks"][t]["seeds"] for t in cfg.tasks]
    ds2 = LeRobotDataset(tmp_path / "b")
    a = np.stack([ds[i]["action"][0].numpy() for i in range(len(ds))])
    b = np.stack([ds2[i]["action"].numpy() for i in range(len(ds2))])
    assert np.array_equal(a, b)


def test_record_config_errors(tmp_path):
    with pytest.raises(ValueError, match="episodes: got 0"):
        RecordConfig(tasks=("reach-v3",), episodes=0, output=tmp_path)
    with pytest.raises(ValueError, match="tasks: got none"):
        RecordConfig(tasks=(), episodes=1, output=tmp_path)
