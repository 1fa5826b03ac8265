"""Datasets move both ways between smolvla and LeRobot 0.6.1, with the same values.

Ours -> LeRobot: datasets written by our DatasetWriter (finalized with several video files, or left with
one video file per episode, AV1 or H.264) load in LeRobot's own `LeRobotDataset`, and every item (state,
action chunk and padding, decoded camera frames, indices, task) equals what our reader returns.
LeRobot -> ours: a dataset recorded by LeRobot (`create`, `add_frame`, `save_episode`, `finalize`) loads
in ours with the values LeRobot recorded and reads back.

`lerobot_dataset_side.py` runs under LeRobot's interpreter; data crosses as safetensors and JSON only.
Set SMOLVLA_LEROBOT_PYTHON to that interpreter (an environment with lerobot==0.6.1) to run these tests.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from smolvla.data import DatasetWriter, LeRobotDataset, check_dataset
from tests.data import synth

# non-image columns both readers must give identically
COLUMNS = ["action", "action_is_pad", "timestamp", "frame_index", "episode_index", "index", "task_index"]

LEROBOT_PYTHON = os.environ.get("SMOLVLA_LEROBOT_PYTHON")
SIDE = Path(__file__).with_name("lerobot_dataset_side.py")
pytestmark = pytest.mark.skipif(
    not LEROBOT_PYTHON, reason="set SMOLVLA_LEROBOT_PYTHON to run against LeRobot"
)
LENGTHS = [4, 6, 3]
PIXEL_TOL = 2 / 255  # the two sides' FFmpeg builds convert YUV to RGB; the decoded streams are identical


def run_side(*args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    p = subprocess.run(
        [LEROBOT_PYTHON, str(SIDE), *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, f"LeRobot side failed:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"


def our_items(root: Path) -> dict[str, np.ndarray]:
    ds = LeRobotDataset(root, chunk_size=3)
    items = [ds[i] for i in range(len(ds))]
    return {k: np.stack([it[k].numpy() for it in items]) for k in items[0] if k != "task"} | {
        "task": [it["task"] for it in items]
    }


@pytest.mark.parametrize(
    "variant",
    [
        {"video_codec": "h264", "video_files_size_in_mb": 0.004},
        {"video_codec": "libsvtav1"},
        {"video_codec": "h264", "finalize": False},
    ],
    ids=["h264-several-files", "av1", "h264-unfinalized"],
)
def test_ours_loads_in_lerobot(tmp_path: Path, variant: dict) -> None:
    root = tmp_path / "ours"
    feats = synth.features(size=32, cams=("top", "wrist"))
    finalize = variant.pop("finalize", True)
    w = DatasetWriter.create(root, fps=synth.FPS, features=feats, robot_type="sawyer", **variant)
    for e, n in enumerate(LENGTHS):
        for fr in synth.episode(e, n, feats):
            w.add_frame(dict(fr))
        w.save_episode()
    w.finalize() if finalize else w.close()

    run_side("read", str(root), str(tmp_path / "out"))
    theirs = load_file(str(tmp_path / "out/items.safetensors"))
    meta = json.loads((tmp_path / "out/meta.json").read_text())
    assert check_dataset(root, full=True).ok
    ours = our_items(root)
    assert meta["len"] == len(ours["index"]) == sum(LENGTHS) and meta["total_episodes"] == len(LENGTHS)
    assert meta["tasks"] == ours["task"]
    for key in ["observation.state", *COLUMNS]:
        np.testing.assert_array_equal(theirs[key], ours[key], err_msg=key)
    for cam in ["observation.images.top", "observation.images.wrist"]:
        np.testing.assert_allclose(theirs[cam], ours[cam], atol=PIXEL_TOL, rtol=0, err_msg=cam)
    ours_ds = LeRobotDataset(root)
    for feat, s in ours_ds.stats.items():
        for k, v in s.items():
            np.testing.assert_allclose(np.asarray(meta["stats"][feat][k]), v, err_msg=f"{feat}.{k}")
    for ep, row in zip(ours_ds.meta.episodes, meta["episodes"], strict=True):
        assert row["dataset_from_index"] == ep.from_index and row["length"] == ep.length


def test_lerobot_dataset_loads_in_ours(tmp_path: Path) -> None:
    feats = synth.features(size=32, cams=("top",))
    frames = [fr for e, n in enumerate(LENGTHS) for fr in synth.episode(e, n, feats)]
    bounds = np.cumsum([0, *LENGTHS])
    arrays = {k: np.stack([fr[k] for fr in frames]) for k in feats}
    inp = tmp_path / "in"
    inp.mkdir()
    save_file(arrays, str(inp / "frames.safetensors"))
    spec = {
        "fps": synth.FPS,
        "features": feats,
        "episodes": [[int(a), int(b)] for a, b in itertools.pairwise(bounds)],
        "tasks": [fr["task"] for fr in frames],
    }
    (inp / "frames.json").write_text(json.dumps(spec))
    root = tmp_path / "theirs"
    run_side("write", str(inp), str(root))
    run_side("read", str(root), str(tmp_path / "out"))
    theirs = load_file(str(tmp_path / "out/items.safetensors"))
    meta = json.loads((tmp_path / "out/meta.json").read_text())

    for full in (False, True):  # what LeRobot writes is consistent by our dataset check too
        report = check_dataset(root, full=full)
        assert report.ok, report.problems
    ours = our_items(root)
    np.testing.assert_array_equal(ours["observation.state"], arrays["observation.state"])
    np.testing.assert_array_equal(ours["action"][:, 0], arrays["action"])
    assert ours["task"] == spec["tasks"] == meta["tasks"]
    for key in COLUMNS:
        np.testing.assert_array_equal(theirs[key], ours[key], err_msg=key)
    cam = "observation.images.top"
    np.testing.assert_allclose(theirs[cam], ours[cam], atol=PIXEL_TOL, rtol=0)
    recorded = arrays[cam].transpose(0, 3, 1, 2) / 255.0
    assert np.abs(ours[cam] - recorded).mean() < 4 / 255  # lossy video, close to what was recorded
    ds = LeRobotDataset(root)
    assert ds.meta.version == "v3.0" and ds.meta.robot_type == "test"
    for feat, s in ds.stats.items():
        for k, v in s.items():
            np.testing.assert_allclose(np.asarray(meta["stats"][feat][k]), v, err_msg=f"{feat}.{k}")

    # And our writer appends to LeRobot's dataset, which LeRobot still reads.
    w = DatasetWriter.resume(root)
    for fr in synth.episode(3, 5, feats):
        w.add_frame(dict(fr))
    w.save_episode()
    w.finalize()
    run_side("read", str(root), str(tmp_path / "out2"))
    again = load_file(str(tmp_path / "out2/items.safetensors"))
    assert len(again["index"]) == sum(LENGTHS) + 5
    np.testing.assert_array_equal(again["index"], np.arange(sum(LENGTHS) + 5))
    np.testing.assert_array_equal(
        again["observation.state"][-5:],
        np.stack([fr["observation.state"] for fr in synth.episode(3, 5, feats)]),
    )
