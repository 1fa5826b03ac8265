"""Deterministic tiny episodes for the data tests (also imported by the crash-test child process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

FPS = 10
STATE_DIM, ACTION_DIM = 4, 3


def features(size: int = 16, cams: tuple[str, ...] = ("top",), image: str | None = None) -> dict[str, Any]:
    feats: dict[str, Any] = {
        "observation.state": {"dtype": "float32", "shape": [STATE_DIM], "names": ["x", "y", "z", "g"]},
        "action": {"dtype": "float32", "shape": [ACTION_DIM], "names": None},
    }
    for cam in cams:
        feats[f"observation.images.{cam}"] = {"dtype": "video", "shape": [size, size, 3], "names": None}
    if image:
        feats[f"observation.images.{image}"] = {"dtype": "image", "shape": [size, size, 3], "names": None}
    return feats


def frame(e: int, i: int, h: int, w: int, cam: int = 0) -> np.ndarray:
    """A smooth picture (lossy video keeps it within a few levels) that differs per episode and frame."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = xx * 96 // max(1, w - 1) + 40 + 20 * cam
    img[..., 1] = yy * 96 // max(1, h - 1) + 60
    img[..., 2] = (e * 37 + i * 11 + cam * 60) % 150 + 50
    return img


def episode(e: int, n: int, feats: dict[str, Any]) -> list[dict[str, Any]]:
    """The frames add_frame receives for episode e (n frames)."""
    rng = np.random.default_rng(1000 + e)
    state = rng.normal(size=(n, STATE_DIM)).astype(np.float32)
    action = rng.normal(size=(n, ACTION_DIM)).astype(np.float32)
    cams = [k for k, f in feats.items() if f["dtype"] in ("video", "image")]
    out = []
    for i in range(n):
        fr: dict[str, Any] = {"observation.state": state[i], "action": action[i], "task": f"task {e % 2}"}
        for c, key in enumerate(cams):
            h, w, _ = feats[key]["shape"]
            fr[key] = frame(e, i, h, w, c)
        out.append(fr)
    return out


def write(root: Path, lengths: list[int], feats: dict[str, Any] | None = None, **create: Any):
    """A finalized dataset of len(lengths) episodes; returns the frames written, per episode."""
    from smolvla.data import DatasetWriter

    feats = feats or features()
    written = []
    with DatasetWriter.create(root, fps=FPS, features=feats, **create) as w:
        for e, n in enumerate(lengths):
            frames = episode(e, n, feats)
            for fr in frames:
                w.add_frame(dict(fr))
            w.save_episode()
            written.append(frames)
    return written
