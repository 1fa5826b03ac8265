"""`smolvla bench data_loader`: recording and loading speed of the data layer, per camera size and
video codec.

    smolvla bench data_loader                                   # 224x224 and 128x128, h264 and libsvtav1
    smolvla bench data_loader --frames='mw_{size}.npy' --sizes 224

For each case it records a dataset like a Meta-World demo set (one camera, 4-D state and action,
20 episodes x 100 frames at 30 fps) with DatasetWriter, then measures:
- record_fps: frames/s through add_frame + save_episode (video encoding included, no simulator);
- kb_per_frame and psnr_db: video size and quality against the recorded frames;
- random_access_fps: single frames decoded at random timestamps (decode_frames, one process);
- loader_samples_per_s: LeRobotDataset(chunk_size=50) through a shuffled torch DataLoader, batch 32,
  2 workers, after a warm-up.
Prints one JSON line per case. Frames come from `--frames` (uint8 (T, H, W, 3) .npy files, e.g. renders
saved from Meta-World; `{size}` is replaced by the size) or are synthetic: a textured scene with moving
objects.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smolvla.apps.bench import BenchError
from smolvla.data import DatasetWriter, LeRobotDataset, clear_video_cache, decode_frames


def synthetic_frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cells = rng.uniform(60, 200, (size // 8 + 1, size // 8 + 1, 3))
    bg = np.repeat(np.repeat(cells, 8, 0), 8, 1)[:size, :size]  # a tiled floor
    yy, xx = np.mgrid[0:size, 0:size]
    bg = bg * (0.7 + 0.3 * yy[..., None] / size)  # lighting gradient
    out = np.empty((n, size, size, 3), np.uint8)
    for t in range(n):
        f = bg.copy()
        for k in range(3):  # objects moving smoothly
            cx = size / 2 + size / 3 * np.sin(0.05 * t + 2 * k)
            cy = size / 2 + size / 4 * np.cos(0.07 * t + k)
            f[(xx - cx) ** 2 + (yy - cy) ** 2 < (size / 12) ** 2] = (40 + 70 * k, 200 - 60 * k, 90 + 50 * k)
        out[t] = np.clip(f, 0, 255)
    return out


def run_case(root: Path, frames: np.ndarray, codec: str, episodes: int, length: int, batches: int) -> dict:
    size = frames.shape[1]
    features = {
        "observation.state": {"dtype": "float32", "shape": [4], "names": None},
        "action": {"dtype": "float32", "shape": [4], "names": None},
        "observation.images.corner2": {"dtype": "video", "shape": [size, size, 3], "names": None},
    }
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    with DatasetWriter.create(root, fps=30, features=features, video_codec=codec) as w:
        for e in range(episodes):
            for i in range(length):
                w.add_frame(
                    {
                        "observation.state": rng.normal(size=4).astype(np.float32),
                        "action": rng.normal(size=4).astype(np.float32),
                        "observation.images.corner2": frames[(e * length + i) % len(frames)],
                        "task": f"task {e % 5}",
                    }
                )
            w.save_episode()
    record_fps = episodes * length / (time.perf_counter() - t0)
    total = episodes * length
    video = next((root / "videos").rglob("*.mp4"))
    kb = sum(p.stat().st_size for p in (root / "videos").rglob("*.mp4")) / total / 1024

    ds = LeRobotDataset(root, chunk_size=50)
    ep = ds.meta.episodes[0]
    path, start = ep.videos["observation.images.corner2"]
    got = decode_frames(path, [start + i / 30 for i in range(length)]).astype(np.float64)
    mse = ((got - frames[:length].astype(np.float64)) ** 2).mean()
    psnr = 10 * np.log10(255**2 / max(mse, 1e-12))

    clear_video_cache()
    ts = rng.integers(0, total, 300) / 30
    decode_frames(video, [0.0])
    t0 = time.perf_counter()
    for t in ts:
        decode_frames(video, [float(t)])
    random_access = len(ts) / (time.perf_counter() - t0)
    clear_video_cache()

    loader = torch.utils.data.DataLoader(
        ds, batch_size=32, shuffle=True, num_workers=2, persistent_workers=True, prefetch_factor=4
    )
    it = iter(loader)
    for _ in range(3):  # warm-up: workers started, containers opened
        next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += len(batch["index"])
    loader_sps = n / (time.perf_counter() - t0)
    del it, loader
    return {
        "size": size,
        "codec": codec,
        "crf": ds.meta.features["observation.images.corner2"]["info"]["video.crf"],
        "episodes": episodes,
        "frames": total,
        "record_fps": round(record_fps, 1),
        "kb_per_frame": round(kb, 2),
        "psnr_db": round(float(psnr), 2),
        "random_access_fps": round(random_access, 1),
        "loader_samples_per_s": round(loader_sps, 1),
        "batch": 32,
        "workers": 2,
    }


@dataclass(frozen=True)
class BenchDataLoaderConfig:
    """Recording and loading speed of the data layer, per camera size and video codec."""

    sizes: tuple[int, ...] = (224, 128)  # camera sides in pixels, one case each
    codecs: tuple[str, ...] = ("h264", "libsvtav1")  # video codecs, one case each
    episodes: int = 20  # episodes recorded per case
    length: int = 100  # frames per episode
    batches: int = 40  # timed DataLoader batches per case
    # a .npy of uint8 (T, H, W, 3) frames, '{size}' replaced by the size (None: synthetic frames)
    frames: str | None = None


def run(args: BenchDataLoaderConfig) -> None:
    """One JSON line per (size, codec)."""
    torch.set_num_threads(1)
    for size in args.sizes:
        if args.frames:
            frames = np.load(args.frames.format(size=size))
            if frames.shape[1:] != (size, size, 3) or frames.dtype != np.uint8:
                raise BenchError(
                    f"--frames: {frames.shape} {frames.dtype}, expected (T, {size}, {size}, 3) uint8"
                )
            source = args.frames.format(size=size)
        else:
            frames, source = synthetic_frames(args.episodes * args.length, size), "synthetic"
        for codec in args.codecs:
            tmp = Path(tempfile.mkdtemp(prefix="smolvla-bench-"))
            try:
                result = run_case(tmp / "ds", frames, codec, args.episodes, args.length, args.batches)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            print(json.dumps({**result, "frames_source": source}), flush=True)
