"""Verifying a dataset end to end: every file present and readable, the metadata true to the data.

    report = check_dataset("data/reach")             # quick: metadata, files, parquet rows, video headers
    report = check_dataset("data/reach", full=True)  # also decodes every frame of every camera
    report.raise_for_problems()                      # DatasetError listing every problem found

Opening a dataset (`LeRobotDatasetMeta.load`) already rejects metadata that cannot be parsed and stats that
cannot be right. What it cannot see without reading the data is metadata that parses but contradicts it:
a camera shape the videos do not have (it would be written into the trained checkpoint), a `total_frames`
the parquet files do not hold, an fps the timestamps do not follow, missing video or parquet files. This
module reads the data to find those, and reports them all at once rather than the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from smolvla.data.dataset import EpisodeMeta, LeRobotDatasetMeta
from smolvla.data.errors import DatasetError, VideoError
from smolvla.data.video import decode_frames, decode_png, demux_end_s, probe_video

CHECK_MODES = ("quick", "full")
# LeRobot's default tolerance between a frame's timestamp and frame_index / fps (LeRobotDataset.tolerance_s).
TOLERANCE_S = 1e-4
_INDEX_COLUMNS = ("episode_index", "frame_index", "index", "timestamp", "task_index")


@dataclass
class CheckReport:
    """What `check_dataset` found. `problems` is empty when the dataset is consistent."""

    root: str
    full: bool
    problems: list[str] = field(default_factory=list)
    episodes: int = 0
    frames: int = 0
    files_checked: int = 0
    frames_decoded: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        if self.problems:
            shown = self.problems[:20]
            more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
            raise DatasetError(
                f"{self.root}: {len(self.problems)} problem(s) found by the "
                f"{'full' if self.full else 'quick'} dataset check:\n  " + "\n  ".join(shown) + more
            )


def check_mode(value: str) -> bool:
    """`full` for a check mode name ("quick" or "full"), as the training config's `dataset.check` gives it."""
    if value not in CHECK_MODES:
        raise DatasetError(f"dataset.check: got {value!r}, expected one of {list(CHECK_MODES)}")
    return value == "full"


def check_dataset(root: str | Path, full: bool = False) -> CheckReport:
    """Checks a dataset against its own metadata; never modifies it.

    Quick (`full=False`): metadata parses and its stats are valid; totals (episodes, frames, tasks) match the
    episodes; episodes cover consecutive global index ranges from 0; every episode's tasks are known; every
    data file is present and readable and holds, per episode, exactly `length` rows with frame_index 0..L-1,
    the episode's index range, timestamps on frame_index / fps and known task indices; every video file is
    present, its header readable, its size the camera shape of info.json, its fps the dataset's, and long
    enough for its episodes. Full (`full=True`): in addition every frame of every camera is decoded (video at
    each frame's timestamp, images from the parquet) and its size compared with info.json.
    """
    report = CheckReport(root=str(root), full=full)
    try:
        meta = LeRobotDatasetMeta.load(root)
    except DatasetError as e:
        report.problems.append(str(e))
        return report
    report.root = str(meta.root)
    report.episodes = len(meta.episodes)
    report.frames = sum(ep.length for ep in meta.episodes)
    _check_totals(meta, report.problems)
    _check_data_files(meta, report, full)
    _check_videos(meta, report, full)
    return report


def _check_totals(meta: LeRobotDatasetMeta, problems: list[str]) -> None:
    info, where = meta.info, f"{meta.root}/meta/info.json"
    frames = sum(ep.length for ep in meta.episodes)
    if meta.total_frames != frames:
        problems.append(
            f"{where}: total_frames is {meta.total_frames}, but the episodes hold {frames} frames "
            f"({len(meta.episodes)} episodes)"
        )
    if "total_tasks" in info and info["total_tasks"] != len(meta.tasks):
        problems.append(
            f"{where}: total_tasks is {info['total_tasks']!r}, but the dataset has {len(meta.tasks)}"
        )
    expected = 0
    for ep in meta.episodes:
        if ep.from_index != expected:
            problems.append(
                f"episode {ep.index}: its frames start at global index {ep.from_index}, expected {expected} "
                "(the end of the previous episode)"
            )
        expected = ep.to_index
        unknown = [t for t in ep.tasks if t not in meta.tasks]
        if unknown:
            problems.append(f"episode {ep.index}: tasks {unknown} are not in the dataset's tasks")


def _check_data_files(meta: LeRobotDatasetMeta, report: CheckReport, full: bool) -> None:
    by_file: dict[Path, list[EpisodeMeta]] = {}
    for ep in meta.episodes:
        by_file.setdefault(ep.data_file, []).append(ep)
    images = meta.image_keys if full else []
    for path, eps in by_file.items():
        report.files_checked += 1
        if not path.is_file():
            report.problems.append(f"{path}: data file of episodes {[e.index for e in eps]} is missing")
            continue
        try:
            names = pq.read_schema(path).names
            missing = [c for c in _INDEX_COLUMNS if c not in names]
            if missing:
                report.problems.append(f"{path}: lacks columns {missing}")
                continue
            table = pq.read_table(path, columns=[*_INDEX_COLUMNS, *images])
        except (pa.ArrowException, OSError) as e:
            report.problems.append(f"{path}: not a readable parquet file ({e})")
            continue
        cols = {c: table.column(c).to_numpy() for c in _INDEX_COLUMNS}
        for ep in eps:
            rows = np.flatnonzero(cols["episode_index"] == ep.index)
            _check_rows(meta, ep, path, rows, cols, report.problems)
            for key in images:
                _check_images(meta, ep, path, key, table.column(key).take(pa.array(rows)), report)


def _check_rows(
    meta: LeRobotDatasetMeta,
    ep: EpisodeMeta,
    path: Path,
    rows: np.ndarray,
    cols: dict[str, np.ndarray],
    problems: list[str],
) -> None:
    at = f"{path}: episode {ep.index}"
    if len(rows) != ep.length:
        problems.append(f"{at} has {len(rows)} rows, the episodes metadata says {ep.length} frames")
        return
    fi, ix, ts, task = (cols[c][rows] for c in ("frame_index", "index", "timestamp", "task_index"))
    if not np.array_equal(fi, np.arange(ep.length)):
        problems.append(f"{at}: frame_index is {fi[:5].tolist()}..., expected 0..{ep.length - 1}")
    if not np.array_equal(ix, np.arange(ep.from_index, ep.to_index)):
        problems.append(
            f"{at}: index runs {int(ix.min())}..{int(ix.max())}, expected {ep.from_index}..{ep.to_index - 1}"
        )
    off = np.abs(ts.astype(np.float64) - np.arange(ep.length) / meta.fps)
    if not np.isfinite(off).all() or (off > TOLERANCE_S).any():
        i = int(np.flatnonzero(~(off <= TOLERANCE_S))[0])
        problems.append(
            f"{at}: frame {i} has timestamp {float(ts[i]):.6g} s, expected {i / meta.fps:.6g} s (frame / fps "
            f"at fps {meta.fps}): the timestamps do not follow info.json's fps"
        )
    if len(task) and (task.min() < 0 or task.max() >= len(meta.tasks)):
        problems.append(
            f"{at}: task_index values {int(task.min())}..{int(task.max())}, expected 0..{len(meta.tasks) - 1}"
        )


def _camera_hw(meta: LeRobotDatasetMeta, key: str) -> tuple[int, int]:
    h, w, _ = meta.features[key]["shape"]  # LeRobot's camera layout: [height, width, channels]
    return int(h), int(w)


def _check_images(
    meta: LeRobotDatasetMeta, ep: EpisodeMeta, path: Path, key: str, col: Any, report: CheckReport
) -> None:
    want = _camera_hw(meta, key)
    for i, v in enumerate(col.to_pylist()):
        try:
            img = decode_png(v["bytes"] if isinstance(v, dict) else v, f"{path} {key} episode {ep.index}")
        except DatasetError as e:
            report.problems.append(str(e))
            return
        report.frames_decoded += 1
        if img.shape[:2] != want:
            report.problems.append(
                f"{path}: episode {ep.index}, frame {i} of {key!r} is {img.shape[0]} x {img.shape[1]}, "
                f"info.json says {want[0]} x {want[1]} (height x width)"
            )
            return


def _check_videos(meta: LeRobotDatasetMeta, report: CheckReport, full: bool) -> None:
    fps = meta.fps
    files: dict[tuple[str, Path], list[EpisodeMeta]] = {}
    for ep in meta.episodes:
        for key, (path, _) in ep.videos.items():
            files.setdefault((key, path), []).append(ep)
    for (key, path), eps in files.items():
        report.files_checked += 1
        if not path.is_file():
            report.problems.append(
                f"{path}: video file of camera {key!r}, episodes {[e.index for e in eps]}, is missing"
            )
            continue
        try:
            vi = probe_video(path)
        except VideoError as e:
            report.problems.append(str(e))
            continue
        want = _camera_hw(meta, key)
        if (vi.height, vi.width) != want:
            report.problems.append(
                f"{path}: frames are {vi.height} x {vi.width}, but info.json gives camera {key!r} shape "
                f"{list(meta.features[key]['shape'])} ({want[0]} x {want[1]}, height x width)"
            )
        if vi.fps and vi.fps != fps:
            report.problems.append(f"{path}: the video runs at {vi.fps} fps, info.json says fps {fps}")
        end = max(ep.videos[key][1] + ep.length / fps for ep in eps)
        try:
            # The packets, not the header: a cut-short copy keeps its header. Only the tail is read; the
            # whole file only to report how much it holds once it is found short.
            held, _ = demux_end_s(path, from_s=max(0.0, end - 2.0))
            if held + 0.5 / fps < end:
                held, _ = demux_end_s(path)
        except VideoError as e:
            report.problems.append(str(e))
            continue
        held = min(held, vi.duration_s) if vi.duration_s > 0 else held
        if held + 0.5 / fps < end:
            report.problems.append(
                f"{path}: holds {held:.4f} s of video, but its episodes need up to {end:.4f} s "
                "(truncated, or the episodes metadata is wrong)"
            )
            continue
        if full:
            for ep in eps:
                start = ep.videos[key][1]
                try:
                    frames = decode_frames(path, [start + i / fps for i in range(ep.length)], TOLERANCE_S)
                except VideoError as e:
                    report.problems.append(f"episode {ep.index}, camera {key!r}: {e}")
                    break
                report.frames_decoded += len(frames)
                if frames.shape[1:3] != want:
                    report.problems.append(
                        f"{path}: episode {ep.index} decodes to {frames.shape[1]} x {frames.shape[2]}, "
                        f"info.json says {want[0]} x {want[1]}"
                    )
                    break
