"""Looking at a dataset before training on it: `smolvla dataset info | show | stats`.

`info`: episodes, frames, features, cameras, tasks, stats; `show`: an episode's cameras side by side
with the instruction (MP4), and its state and action over time (PNG); `recompute_stats`: rewrite
meta/stats.json from the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from smolvla.config import ACTION, OBS_STATE
from smolvla.data.check import check_dataset
from smolvla.data.dataset import EpisodeMeta, LeRobotDatasetMeta
from smolvla.data.errors import DatasetError
from smolvla.data.format import STATS_PATH
from smolvla.data.stats import ImageStats, aggregate_stats, stats_to_json, vector_stats
from smolvla.data.video import decode_frames, encode_video
from smolvla.io import write_json


def info(root: str | Path) -> dict[str, Any]:
    """A summary of the dataset (what `smolvla dataset info` prints). Runs the quick `check_dataset` first:
    a dataset whose files are missing or whose metadata contradicts its data is a DatasetError, not a
    summary of what it claims to hold."""
    check_dataset(root, full=False).raise_for_problems()
    meta = LeRobotDatasetMeta.load(root)
    feats = {k: {"dtype": f["dtype"], "shape": list(f["shape"])} for k, f in meta.features.items()}
    lengths = [e.length for e in meta.episodes] or [0]
    summary: dict[str, Any] = {
        "root": str(meta.root),
        "codebase_version": meta.version,
        "robot_type": meta.robot_type,
        "fps": meta.fps,
        "episodes": meta.total_episodes,
        "frames": meta.total_frames,
        "episode_length": {
            "min": min(lengths),
            "mean": round(float(np.mean(lengths)), 1),
            "max": max(lengths),
        },
        "duration_s": round(meta.total_frames / meta.fps, 1),
        "cameras": {
            k: {"shape": list(meta.features[k]["shape"]), **_codec(meta.features[k])}
            for k in meta.camera_keys
        },
        "features": feats,
        "tasks": list(meta.tasks),
    }
    if meta.stats:
        summary["stats"] = {
            k: {
                s: np.round(np.asarray(v[s]).reshape(-1), 4).tolist()
                for s in ("mean", "std", "min", "max")
                if s in v
            }
            for k, v in meta.stats.items()
            if k in (OBS_STATE, ACTION)
        }
    return summary


def _codec(ft: dict[str, Any]) -> dict[str, Any]:
    i = ft.get("info") or {}
    return {k: i[f"video.{k}"] for k in ("codec", "pix_fmt") if f"video.{k}" in i}


def print_info(summary: dict[str, Any]) -> None:
    s = summary
    print(f"{s['root']}  (LeRobotDataset {s['codebase_version']}, robot {s['robot_type']})")
    length = s["episode_length"]
    print(
        f"  {s['episodes']} episodes, {s['frames']} frames at {s['fps']} fps ({s['duration_s']} s);"
        f" episode length min {length['min']} / mean {length['mean']} / max {length['max']}"
    )
    for k, c in s["cameras"].items():
        print(f"  camera   {k}  {c['shape']}  {c.get('codec', '')} {c.get('pix_fmt', '')}")
    for k, f in s["features"].items():
        if k not in s["cameras"]:
            print(f"  feature  {k}  {f['dtype']} {f['shape']}")
    print(f"  tasks ({len(s['tasks'])}):")
    for t in s["tasks"][:20]:
        print(f"    {t!r}")
    if len(s["tasks"]) > 20:
        print(f"    ... and {len(s['tasks']) - 20} more")
    for k, st in s.get("stats", {}).items():
        print(f"  stats    {k}: mean {st['mean']}  std {st['std']}")


# --------------------------------------------------------------------------------------------------
# Reading one episode's raw values


def episode_arrays(meta: LeRobotDatasetMeta, ep: EpisodeMeta, keys: list[str]) -> dict[str, np.ndarray]:
    """The episode's rows of the numeric features `keys`, (T, D) each."""
    table = pq.read_table(ep.data_file, columns=list(dict.fromkeys(["index", *keys])))
    index = table.column("index").to_numpy()
    rows = np.flatnonzero((index >= ep.from_index) & (index < ep.to_index))
    if len(rows) != ep.length:
        raise DatasetError(f"episode {ep.index}: {len(rows)} rows in {ep.data_file}, expected {ep.length}")
    return {
        k: np.stack(table.column(k).to_numpy(zero_copy_only=False)[rows]).astype(np.float32) for k in keys
    }


def episode_frames(meta: LeRobotDatasetMeta, ep: EpisodeMeta, camera: str) -> np.ndarray:
    """The episode's frames of a camera, uint8 (T, H, W, 3), decoded in one pass."""
    if camera in ep.videos:
        path, start = ep.videos[camera]
        try:
            return decode_frames(path, [start + i / meta.fps for i in range(ep.length)])
        except DatasetError as e:
            raise DatasetError(f"episode {ep.index}, {camera}: {e}") from e
    from smolvla.data.dataset import LeRobotDataset  # image features live in the parquet

    ds = LeRobotDataset(meta.root, episodes=[ep.index])
    return np.stack(
        [(ds[i][camera].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for i in range(len(ds))]
    )


# --------------------------------------------------------------------------------------------------
# show


def show(root: str | Path, episode: int, output: str | Path) -> tuple[Path, Path]:
    """Writes `output` (MP4: cameras side by side under the instruction) and a PNG of state and action
    over time beside it. Returns both paths."""
    from PIL import Image, ImageDraw

    meta = LeRobotDatasetMeta.load(root)
    if not 0 <= episode < meta.total_episodes:
        raise DatasetError(f"--episode_index: got {episode}, expected 0..{meta.total_episodes - 1}")
    ep = meta.episodes[episode]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    cams = [episode_frames(meta, ep, c) for c in meta.camera_keys]
    scale = max(1, 256 // max(f.shape[1] for f in cams)) if cams else 1
    text = " / ".join(ep.tasks)
    frames = []
    for t in range(ep.length):
        tiles = [np.kron(c[t], np.ones((scale, scale, 1), np.uint8)) for c in cams]
        h = max(x.shape[0] for x in tiles)
        row = np.concatenate([np.pad(x, ((0, h - x.shape[0]), (0, 0), (0, 0))) for x in tiles], axis=1)
        canvas = Image.new("RGB", (row.shape[1], h + 24), (20, 20, 20))
        canvas.paste(Image.fromarray(row), (0, 24))
        ImageDraw.Draw(canvas).text((4, 6), f"{text}   [ep {episode}, frame {t}]", fill=(255, 255, 255))
        frame = np.asarray(canvas)
        frames.append(frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2])  # even sides for yuv420p
    encode_video(np.stack(frames), output, fps=meta.fps, codec="h264")
    png = output.with_suffix(".png")
    keys = [k for k in (OBS_STATE, ACTION) if k in meta.features]
    plot_episode(episode_arrays(meta, ep, keys), meta.features, meta.fps, f"episode {episode}: {text}", png)
    return output, png


def plot_episode(values: dict[str, np.ndarray], features: dict, fps: int, title: str, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(values), 1, figsize=(9, 2.8 * len(values)), sharex=True, squeeze=False)
    for ax, (key, v) in zip(axes[:, 0], values.items(), strict=True):
        names = features[key].get("names") or [f"{key}[{i}]" for i in range(v.shape[1])]
        t = np.arange(len(v)) / fps
        for i in range(v.shape[1]):
            ax.plot(t, v[:, i], label=str(names[i]) if i < len(names) else str(i))
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=min(4, v.shape[1]), loc="upper right")
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# stats


def recompute_stats(root: str | Path, progress: bool = True) -> dict[str, Any]:
    """Recomputes every feature's stats from the data and videos, and rewrites `meta/stats.json`
    (atomically). Per-episode stats are aggregated count-weighted, as the writer does."""
    from tqdm import tqdm

    meta = LeRobotDatasetMeta.load(root)
    numeric = [k for k, f in meta.features.items() if f["dtype"] not in ("video", "image", "string")]
    per_episode = []
    for ep in tqdm(meta.episodes, desc="stats", unit="ep", disable=not progress):
        stats = {k: vector_stats(v.reshape(len(v), -1)) for k, v in episode_arrays(meta, ep, numeric).items()}
        for cam in meta.camera_keys:
            acc = ImageStats()
            for frame in episode_frames(meta, ep, cam):
                acc.add(frame)
            stats[cam] = acc.result()
        per_episode.append(stats)
    result = stats_to_json(aggregate_stats(per_episode))
    write_json(Path(meta.root) / STATS_PATH, result, indent=4)
    return result
