"""LeRobot's half of the dataset compatibility test. Runs under LeRobot's interpreter (never ours).

    python lerobot_dataset_side.py read ROOT OUT_DIR      # LeRobotDataset(root=ROOT) -> OUT_DIR
    python lerobot_dataset_side.py write IN_DIR ROOT      # LeRobotDataset.create(root=ROOT) from IN_DIR

`read` loads a dataset with LeRobot 0.6.1's own `LeRobotDataset` (with an action chunk of 3) and writes
every item to OUT_DIR/items.safetensors (stacked per key) and OUT_DIR/meta.json (tasks, episodes
metadata, stats, totals). `write` records the frames of IN_DIR/frames.safetensors + IN_DIR/frames.json
with `create`, `add_frame`, `save_episode` and `finalize`. Only JSON and safetensors cross the process
boundary; the socket guard refuses any network connection.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path


def _guard(self, address, *args, **kwargs):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        raise OSError(f"lerobot_dataset_side.py: network access refused ({address})")
    return _real_connect(self, address, *args, **kwargs)


_real_connect = socket.socket.connect
socket.socket.connect = _guard


def read(root: Path, out: Path) -> None:
    import numpy as np
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from safetensors.numpy import save_file

    ds = LeRobotDataset("local/compat", root=root, delta_timestamps={"action": [0.0, 1 / 10, 2 / 10]})
    items = [ds[i] for i in range(len(ds))]
    tensors = {}
    for key, value in items[0].items():
        if isinstance(value, torch.Tensor):
            tensors[key] = np.stack([it[key].numpy() for it in items])
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "items.safetensors"))
    episodes = ds.meta.episodes
    meta = {
        "len": len(ds),
        "total_episodes": ds.meta.total_episodes,
        "total_frames": ds.meta.total_frames,
        "fps": ds.meta.fps,
        "tasks": [it["task"] for it in items],
        "task_table": {
            str(t): int(i) for t, i in zip(ds.meta.tasks.index, ds.meta.tasks["task_index"], strict=True)
        },
        "episodes": [
            {k: (v if not hasattr(v, "tolist") else v.tolist()) for k, v in episodes[i].items()}
            for i in range(len(episodes))
        ],
        "stats": {f: {k: np.asarray(v).tolist() for k, v in s.items()} for f, s in ds.meta.stats.items()},
        "video_keys": ds.meta.video_keys,
    }
    (out / "meta.json").write_text(json.dumps(meta))


def write(inp: Path, root: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from safetensors.numpy import load_file

    spec = json.loads((inp / "frames.json").read_text())
    arrays = load_file(str(inp / "frames.safetensors"))
    features = {k: {**v, "shape": tuple(v["shape"])} for k, v in spec["features"].items()}
    ds = LeRobotDataset.create(
        "local/compat", fps=spec["fps"], features=features, root=root, robot_type="test"
    )
    for e, (start, end) in enumerate(spec["episodes"]):
        for i in range(start, end):
            frame = {k: arrays[k][i] for k in spec["features"]}
            frame["task"] = spec["tasks"][i]
            ds.add_frame(frame)
        ds.save_episode()
        assert ds.meta.total_episodes == e + 1
    ds.finalize()


if __name__ == "__main__":
    mode, a, b = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    {"read": read, "write": write}[mode](a, b)
