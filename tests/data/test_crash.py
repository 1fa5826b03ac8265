"""Crash safety: a writer killed by SIGKILL mid-episode, at every step of saving an episode, and while
joining video files leaves a dataset that reads with exactly the episodes saved before, and that
DatasetWriter.resume continues."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from smolvla.data import DatasetWriter, LeRobotDataset, LeRobotDatasetMeta, encode_video
from smolvla.data.format import STAGING_DIR
from smolvla.data.writer import DEFAULT_CRF, encoder_name
from tests.data import synth

CHILD = Path(__file__).with_name("crash_writer.py")
LENGTHS = [4, 5, 6, 3]
STEPS = [
    "videos_encoded",
    "videos_placed",
    "data_written",
    "tasks_written",
    "episodes_written",
    "stats_written",
]


def _segment_mb(e: int, n: int) -> float:
    # The size of an episode's own video file (x264 output is deterministic), to place the file-size cap.
    feats = synth.features()
    frames = np.stack([fr["observation.images.top"] for fr in synth.episode(e, n, feats)])
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"smolvla-seg-{os.getpid()}-{e}.mp4"
    encode_video(frames, path, synth.FPS, codec=encoder_name("h264"), crf=DEFAULT_CRF["libx264"])
    size = path.stat().st_size / 2**20
    path.unlink()
    return size


# name -> (mode, committed episodes when killed, video cap in MB or None)
def _scenarios() -> dict[str, tuple[str, int, float | None]]:
    s0, s1, s2 = (_segment_mb(e, n) for e, n in enumerate(LENGTHS[:3]))
    join_cap = s0 + s1 + s2 / 2  # episodes 0 and 1 share a file; saving episode 2 joins them first
    out: dict[str, tuple[str, int, float | None]] = {
        "first-episode": ("point:episodes_written:0", 0, None),
        "mid-episode": ("hang:2:1", 2, None),
    }
    out.update({f"save:{p}": (f"point:{p}:2", 2, None) for p in STEPS})
    out["save:committed"] = ("point:committed:2", 3, None)
    for p in ("group_joined", "group_placed", "group_committed"):
        out[f"join:{p}"] = (f"point:{p}:2", 2, join_cap)
    for p in ("group_placed", "group_committed"):
        out[f"finalize:{p}"] = (f"finalize:{p}", len(LENGTHS), None)
    out["random-moment"] = ("loop", -1, None)
    return out


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int]]:
    """Runs every scenario in its own child process, all at once; returns root and committed count."""
    base = tmp_path_factory.mktemp("crash")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), *sys.path])}
    procs = {}
    for name, (mode, _, cap) in _scenarios().items():
        root = base / name.replace(":", "_")
        args = [sys.executable, str(CHILD), str(root), ",".join(map(str, LENGTHS)), mode]
        if cap is not None:
            args.append(repr(cap))
        procs[name] = (
            root,
            subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True),
        )
    rng = np.random.default_rng(0)
    results = {}
    for name, (root, p) in procs.items():
        mode, committed, _ = _scenarios()[name] if name != "random-moment" else ("loop", -1, None)
        if mode.startswith("hang"):
            assert p.stdout.readline().strip() == "READY", p.stderr.read()
            p.send_signal(signal.SIGKILL)
        elif mode == "loop":
            while True:
                line = p.stdout.readline()
                assert line, p.stderr.read()
                if line.strip() == "SAVED 3":
                    break
            time.sleep(float(rng.uniform(0.0, 0.2)))
            p.send_signal(signal.SIGKILL)
        _, err = p.communicate(timeout=60)
        assert p.returncode == -signal.SIGKILL, f"{name}: exit {p.returncode}\n{err}"
        results[name] = (root, committed)
    return results


def _check(root: Path, n_eps: int) -> None:
    if n_eps == 0:
        assert LeRobotDatasetMeta.load(root).total_episodes == 0
        return
    ds = LeRobotDataset(root)
    assert ds.num_episodes == n_eps
    feats = synth.features()
    for e in range(n_eps):
        n = LENGTHS[e % len(LENGTHS)]
        frames = synth.episode(e, n, feats)
        start, end = ds.episode_bounds(e)
        assert end - start == n
        for i in (0, n - 1):
            item = ds[start + i]
            np.testing.assert_array_equal(item["observation.state"].numpy(), frames[i]["observation.state"])
            np.testing.assert_array_equal(item["action"].numpy(), frames[i]["action"])
            img = (item["observation.images.top"].permute(1, 2, 0).numpy() * 255).round()
            assert np.abs(img - frames[i]["observation.images.top"]).mean() < 4
            assert item["task"] == f"task {e % 2}"
    assert int(ds.stats["action"]["count"][0]) == ds.num_frames
    # LeRobot addresses frames by row position over the globbed data files: rows 0..N-1 must be in order.
    rows = np.concatenate(
        [
            pq.read_table(p, columns=["index"]).column("index").to_numpy()
            for p in sorted((root / "data").glob("*/*.parquet"))
        ]
    )
    np.testing.assert_array_equal(rows[: ds.num_frames], np.arange(ds.num_frames))


@pytest.mark.parametrize("name", list(_scenarios()))
def test_killed_writer_leaves_readable_dataset_and_resumes(crashed, name: str) -> None:
    root, committed = crashed[name]
    if committed < 0:  # killed at a random moment: whatever info.json committed
        committed = LeRobotDataset(root).num_episodes
        assert committed >= 3
    _check(root, committed)

    w = DatasetWriter.resume(root)
    assert w.num_episodes == committed
    e = committed
    for fr in synth.episode(e, LENGTHS[e % len(LENGTHS)], synth.features()):
        w.add_frame(dict(fr))
    assert w.save_episode() == e
    w.finalize()
    _check(root, committed + 1)
    assert not (root / STAGING_DIR).exists()
    # No file is left that metadata does not refer to.
    ds = LeRobotDataset(root)
    used = {ep.videos["observation.images.top"][0] for ep in ds.meta.episodes}
    assert set((root / "videos").rglob("*.mp4")) == used
    assert set((root / "data").rglob("*.parquet")) == {ep.data_file for ep in ds.meta.episodes}
