"""Reading LeRobot datasets (v3.0, and v2.0/v2.1) as torch map-style datasets.

    ds = LeRobotDataset("data/reach", chunk_size=50)
    item = ds[0]
    # item["observation.images.corner2"]: float [3, H, W] in [0, 1]
    # item["observation.state"]: [D];  item["action"]: [50, A];  item["action_is_pad"]: [50] bool
    # item["task"]: str;  item["episode_index"], item["frame_index"], item["timestamp"], item["index"]

Items are LeRobot's: `delta_timestamps={key: [seconds...]}` turns a key into a window of frames
around the current one (shape [T, ...] and a `<key>_is_pad` mask); offsets are rounded to frames
(round(dt * fps), after checking they sit on the 1/fps grid) and clamped to the episode, and the mask is
True where the unclamped frame falls outside it. `chunk_size=N` is shorthand for
`delta_timestamps["action"] = [i / fps for i in range(N)]`.

Everything is checked when the dataset is opened, so a bad dataset fails there and not in the middle of
training: the files info.json names, parquet columns against info.json, every selected episode's rows,
NaN in state and action, episodes of length 0, video files shorter than their episodes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from smolvla.data.errors import DatasetError, VideoError
from smolvla.data.format import (
    EPISODES_DIR,
    INFO_PATH,
    NUMERIC_DTYPES,
    READABLE_VERSIONS,
    STATS_PATH,
    TASKS_PATH,
    VISUAL_DTYPES,
    data_features,
    read_json,
    read_jsonl,
    read_tasks_parquet,
)
from smolvla.data.stats import StatsAccumulator, aggregate_stats, stats_from_columns, stats_from_json
from smolvla.data.video import decode_frames, decode_png, probe_video
from smolvla.stats_check import validate_stats

# Features whose NaN would silently poison training (normalization stats, losses).
NAN_CHECKED_PREFIXES = ("observation.state", "observation.environment_state", "action")


@dataclass(frozen=True)
class EpisodeMeta:
    index: int
    length: int
    tasks: tuple[str, ...]
    data_file: Path
    from_index: int  # global frame index of the first frame ("index" column); the episode is [from, to)
    to_index: int
    videos: dict[str, tuple[Path, float]]  # camera -> (file, from_timestamp)


def lerobot_home() -> Path:
    """Where LeRobot keeps datasets by repo id: $HF_LEROBOT_HOME, else $HF_HOME/lerobot."""
    if os.environ.get("HF_LEROBOT_HOME"):
        return Path(os.environ["HF_LEROBOT_HOME"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    )
    return Path(hf_home).expanduser() / "lerobot"


def resolve_dataset_root(root_or_repo_id: str | Path) -> Path:
    """A local folder; a repo id found under LeRobot's home; else a Hub dataset snapshot."""
    from smolvla import hub

    name = str(root_or_repo_id)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if hub.looks_like_repo_id(name):
        local = lerobot_home() / name
        if (local / INFO_PATH).is_file():
            return local
        return hub.resolve_dir(name, allow_patterns=None, what="dataset", repo_type="dataset")
    raise DatasetError(f"dataset {name!r}: no such folder, and it is not a Hub repo id ('owner/name')")


# --------------------------------------------------------------------------------------------------
# Metadata


class LeRobotDatasetMeta:
    """info.json, tasks, episodes and stats of a LeRobot dataset (v3.0, v2.1 or v2.0 layout)."""

    def __init__(
        self,
        root: Path,
        info: dict[str, Any],
        tasks: list[str],
        episodes: list[EpisodeMeta],
        stats: dict[str, dict[str, np.ndarray]] | None,
    ):
        self.root, self.info, self.tasks, self.episodes, self.stats = root, info, tasks, episodes, stats

    @property
    def version(self) -> str:
        return self.info["codebase_version"]

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return self.info["features"]

    @property
    def robot_type(self) -> str | None:
        return self.info.get("robot_type")

    @property
    def total_episodes(self) -> int:
        return len(self.episodes)

    @property
    def total_frames(self) -> int:
        return int(self.info["total_frames"])

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] == "video"]

    @property
    def image_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] == "image"]

    @property
    def camera_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] in VISUAL_DTYPES]

    @classmethod
    def load(cls, root_or_repo_id: str | Path) -> LeRobotDatasetMeta:
        root = resolve_dataset_root(root_or_repo_id)
        if not (root / INFO_PATH).is_file():
            raise DatasetError(f"{root} is not a LeRobot dataset folder: it has no {INFO_PATH}")
        info = read_json(root / INFO_PATH, "info")
        if not isinstance(info, dict):
            raise DatasetError(f"{root / INFO_PATH}: got {type(info).__name__}, expected a JSON object")
        version = info.get("codebase_version")
        if version not in READABLE_VERSIONS:
            raise DatasetError(
                f"{root / INFO_PATH}: codebase_version {version!r} is not one we read (expected one of "
                f"{list(READABLE_VERSIONS)})"
            )
        for field in ("fps", "features", "total_episodes", "total_frames", "data_path"):
            if field not in info:
                raise DatasetError(f"{root / INFO_PATH}: field {field!r} is missing")
        check_info(info, str(root / INFO_PATH))
        if version == "v3.0":
            tasks = read_tasks_parquet(root / TASKS_PATH) if info.get("total_tasks", 1) else []
            episodes = _episodes_v3(root, info)
            stats = _load_stats(root / STATS_PATH)
            stale = stats is not None and _stats_frames(stats) not in (None, int(info["total_frames"]))
            if (stats is None or stale) and episodes:
                # No stats.json, or one that counts an uncommitted episode (a writer killed between writing
                # stats.json and info.json, the commit point): rebuild it from the episodes' own stats.
                stats = _stats_from_episodes(root, len(episodes)) or None
        else:
            tasks = _tasks_v2(root)
            episodes = _episodes_v2(root, info)
            stats = _load_stats(root / STATS_PATH)
            if stats is None and (root / "meta/episodes_stats.jsonl").is_file():
                per_ep = read_jsonl(root / "meta/episodes_stats.jsonl", "episodes stats")
                stats = aggregate_stats([stats_from_json(r["stats"], "episodes_stats.jsonl") for r in per_ep])
        if stats is not None:
            validate_stats(
                stats, stat_shapes(info["features"]), where=str(root / STATS_PATH), error=DatasetError
            )
        return cls(root, info, tasks, episodes, stats)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_info(info: dict[str, Any], where: str) -> None:
    """The fields of info.json this reader relies on, each of the type it is used as: a value of another
    type is one line naming it here, not a TypeError (or a silently truncated fps) further on."""
    fps = info["fps"]
    # Frames are addressed as round(t * fps): a fractional fps (29.97) would be truncated and every
    # timestamp would drift; LeRobot's fps is an integer.
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0 or not float(fps).is_integer():
        raise DatasetError(f"{where}: fps is {fps!r}, expected a positive integer")
    for name in ("total_episodes", "total_frames"):
        if not _is_int(info[name]) or info[name] < 0:
            raise DatasetError(f"{where}: {name} is {info[name]!r}, expected a non-negative integer")
    if "total_tasks" in info and (not _is_int(info["total_tasks"]) or info["total_tasks"] < 0):
        raise DatasetError(
            f"{where}: total_tasks is {info['total_tasks']!r}, expected a non-negative integer"
        )
    if "chunks_size" in info and (not _is_int(info["chunks_size"]) or info["chunks_size"] < 1):
        raise DatasetError(f"{where}: chunks_size is {info['chunks_size']!r}, expected a positive integer")
    check_features(info["features"], where)
    paths = ["data_path"]
    if any(ft["dtype"] == "video" for ft in info["features"].values()):
        paths.append("video_path")
    for name in paths:
        if not isinstance(info.get(name), str) or not info[name]:
            raise DatasetError(
                f"{where}: {name} is {info.get(name)!r}, expected a path template (the dataset has "
                f"{'videos' if name == 'video_path' else 'data files'})"
            )


def check_features(features: Any, where: str) -> None:
    """info.json's `features`: every dtype known, every shape a list of positive integers, cameras (H, W, 3).

    Checked where the metadata is parsed, so a shape written as a string or a camera of the wrong rank
    is one line naming the feature here, not an exception in the reader, the stats or the policy.
    """
    if not isinstance(features, dict) or not features:
        raise DatasetError(f"{where}: features is {features!r:.80}, expected a non-empty mapping")
    known = (*NUMERIC_DTYPES, *VISUAL_DTYPES, "string")
    for name, ft in features.items():
        if not isinstance(ft, dict) or "dtype" not in ft or "shape" not in ft:
            raise DatasetError(f"{where}: feature {name!r} lacks 'dtype' or 'shape'")
        dtype, shape = ft["dtype"], ft["shape"]
        if dtype not in known:
            raise DatasetError(
                f"{where}: feature {name!r} has dtype {dtype!r}, expected one of {list(known)}"
            )
        if (
            not isinstance(shape, (list, tuple))
            or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
        ):
            raise DatasetError(
                f"{where}: feature {name!r} has shape {shape!r}, expected a list of positive integers"
            )
        if dtype in VISUAL_DTYPES and (len(shape) != 3 or shape[2] != 3):
            raise DatasetError(
                f"{where}: camera {name!r} has shape {list(shape)}, expected [height, width, 3]"
            )


def stat_shapes(features: dict[str, dict[str, Any]]) -> dict[str, tuple[int, ...]]:
    """The shape each feature's stats must fit: per channel (C, 1, 1) for cameras, else the feature's."""
    out = {}
    for name, ft in features.items():
        shape = tuple(ft["shape"])
        out[name] = (shape[2], shape[0], shape[1]) if ft["dtype"] in VISUAL_DTYPES else shape
    return out


def _load_stats(path: Path) -> dict[str, dict[str, np.ndarray]] | None:
    if not path.is_file():
        return None
    try:
        return stats_from_json(read_json(path, "stats"), str(path))
    except ValueError as e:
        raise DatasetError(str(e)) from e


def _stats_frames(stats: dict[str, dict[str, np.ndarray]]) -> int | None:
    for key in ("index", "timestamp", "frame_index"):  # numeric features count every frame
        if key in stats and "count" in stats[key]:
            return int(np.asarray(stats[key]["count"]).reshape(-1)[0])
    return None


def _stats_from_episodes(root: Path, total: int) -> dict[str, dict[str, np.ndarray]]:
    acc = StatsAccumulator()
    rows: dict[int, dict[str, Any]] = {}
    for path in sorted((root / EPISODES_DIR).glob("*/*.parquet")):
        for r in pq.read_table(path).to_pylist():
            if r["episode_index"] < total:
                rows[r["episode_index"]] = r
    for e in range(total):
        acc.add(stats_from_columns(rows[e]))
    return acc.result()


def _check_episode_row(root: Path, e: int, length: Any, where: str) -> int:
    if not isinstance(length, (int, np.integer)) or length <= 0:
        raise DatasetError(f"{root}: episode {e} has length {length!r} ({where}); an episode needs frames")
    return int(length)


def _episodes_v3(root: Path, info: dict[str, Any]) -> list[EpisodeMeta]:
    files = sorted((root / EPISODES_DIR).glob("*/*.parquet"))
    if int(info["total_episodes"]) == 0:
        return []
    if not files:
        raise DatasetError(f"{root}: no episodes metadata ({EPISODES_DIR}/chunk-*/file-*.parquet)")
    video_keys = [k for k, f in info["features"].items() if f["dtype"] == "video"]
    base = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index"]
    base += ["dataset_from_index", "dataset_to_index"]
    vcols = [f"videos/{k}/{c}" for k in video_keys for c in ("chunk_index", "file_index", "from_timestamp")]
    rows: dict[int, dict[str, Any]] = {}
    total = int(info["total_episodes"])
    for path in files:
        try:
            names = pq.read_schema(path).names
            missing = [c for c in base + vcols if c not in names]
            if missing:
                raise DatasetError(f"{path}: episodes metadata lacks columns {missing}")
            table = pq.read_table(path, columns=base + vcols)
        except (pa.ArrowException, OSError) as e:
            raise DatasetError(f"{path}: not a readable parquet file ({e})") from e
        for r in table.to_pylist():
            if r["episode_index"] < total:  # rows past the committed total belong to an unfinished save
                if r["episode_index"] in rows:
                    raise DatasetError(
                        f"{path}: episode {r['episode_index']} appears twice in {EPISODES_DIR}"
                    )
                rows[r["episode_index"]] = r
    if sorted(rows) != list(range(total)):
        have = sorted(rows)
        raise DatasetError(
            f"{root}: info.json has total_episodes={total} but {EPISODES_DIR} holds episodes "
            f"{have[:10]}{'...' if len(have) > 10 else ''} ({len(have)} of them)"
        )
    episodes = []
    for e in range(total):
        r = rows[e]
        length = _check_episode_row(root, e, r["length"], EPISODES_DIR)
        if r["dataset_to_index"] - r["dataset_from_index"] != length:
            raise DatasetError(
                f"{root}: episode {e} spans frames [{r['dataset_from_index']}, {r['dataset_to_index']}) "
                f"but has length {length}"
            )
        data_file = root / info["data_path"].format(
            chunk_index=r["data/chunk_index"], file_index=r["data/file_index"]
        )
        videos = {}
        for k in video_keys:
            rel = info["video_path"].format(
                video_key=k, chunk_index=r[f"videos/{k}/chunk_index"], file_index=r[f"videos/{k}/file_index"]
            )
            videos[k] = (root / rel, float(r[f"videos/{k}/from_timestamp"]))
        episodes.append(
            EpisodeMeta(
                e,
                length,
                tuple(r["tasks"] or ()),
                data_file,
                r["dataset_from_index"],
                r["dataset_to_index"],
                videos,
            )
        )
    return episodes


def _tasks_v2(root: Path) -> list[str]:
    rows = read_jsonl(root / "meta/tasks.jsonl", "tasks")
    by_index = {r.get("task_index"): r.get("task") for r in rows}
    if sorted(by_index) != list(range(len(rows))):
        raise DatasetError(
            f"{root}/meta/tasks.jsonl: task_index values {sorted(by_index)}, expected 0..{len(rows) - 1}"
        )
    return [by_index[i] for i in range(len(rows))]


def _episodes_v2(root: Path, info: dict[str, Any]) -> list[EpisodeMeta]:
    rows = read_jsonl(root / "meta/episodes.jsonl", "episodes")
    total = int(info["total_episodes"])
    by_index = {r.get("episode_index"): r for r in rows}
    if sorted(by_index) != list(range(total)):
        raise DatasetError(
            f"{root}/meta/episodes.jsonl: holds episodes {sorted(by_index)[:10]}, info.json has "
            f"total_episodes={total}"
        )
    chunks = int(info.get("chunks_size", 1000))
    video_keys = [k for k, f in info["features"].items() if f["dtype"] == "video"]
    episodes, start = [], 0
    for e in range(total):
        r = by_index[e]
        length = _check_episode_row(root, e, r.get("length"), "meta/episodes.jsonl")
        fmt = {"episode_chunk": e // chunks, "episode_index": e}
        videos = {k: (root / info["video_path"].format(video_key=k, **fmt), 0.0) for k in video_keys}
        tasks = r.get("tasks") or ()
        episodes.append(
            EpisodeMeta(
                e, length, tuple(tasks), root / info["data_path"].format(**fmt), start, start + length, videos
            )
        )
        start += length
    return episodes


# --------------------------------------------------------------------------------------------------
# Frame data


def _column_values(col: pa.ChunkedArray, name: str, ft: dict[str, Any], path: Path) -> np.ndarray | list:
    """A parquet column as numpy, (N,) for shape (1,) features and (N, D) for vectors."""
    dtype, shape = ft["dtype"], tuple(ft["shape"])
    if dtype == "image":
        return [v["bytes"] if isinstance(v, dict) else v for v in col.to_pylist()]
    if dtype == "string":
        return np.array(col.to_pylist(), dtype=object)
    if dtype not in NUMERIC_DTYPES:
        raise DatasetError(f"{path}: feature {name!r} has dtype {dtype!r}, which this reader does not load")
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        n = len(arr)
        flat = arr.flatten()
        size = int(np.prod(shape))
        if len(flat) != n * size:
            raise DatasetError(
                f"{path}: column {name!r} holds vectors that are not all of length {size} (info.json)"
            )
        values = flat.to_numpy(zero_copy_only=False).reshape(n, *shape)
    else:
        values = arr.to_numpy(zero_copy_only=False)
        if shape != (1,):
            raise DatasetError(
                f"{path}: column {name!r} holds scalars, info.json declares shape {list(shape)}"
            )
    if values.dtype != np.dtype(dtype):
        raise DatasetError(f"{path}: column {name!r} has dtype {values.dtype}, info.json declares {dtype}")
    return values


class LeRobotDataset(torch.utils.data.Dataset):
    """A LeRobot dataset as a map-style torch Dataset (see the module docstring for the items)."""

    def __init__(
        self,
        root_or_repo_id: str | Path,
        *,
        episodes: list[int] | None = None,
        delta_timestamps: dict[str, list[float]] | None = None,
        chunk_size: int | None = None,
        rename_map: dict[str, str] | None = None,
        image_transforms: Callable[[torch.Tensor], torch.Tensor] | None = None,
        tolerance_s: float = 1e-4,
    ):
        self.meta = LeRobotDatasetMeta.load(root_or_repo_id)
        self.root = self.meta.root
        self.tolerance_s = tolerance_s
        if image_transforms is not None and not callable(image_transforms):
            raise DatasetError(
                f"image_transforms: got {type(image_transforms).__name__}, expected a callable"
            )
        self.image_transforms = image_transforms
        feats = self.meta.features
        if self.meta.total_episodes == 0:
            raise DatasetError(f"{self.root}: the dataset has no episodes")

        self.rename_map = dict(rename_map or {})
        unknown = sorted(set(self.rename_map) - set(feats))
        if unknown:
            raise DatasetError(
                f"rename_map: keys {unknown} are not features of {self.root} ({sorted(feats)})"
            )
        renamed = [self.rename_map.get(k, k) for k in feats]
        clashes = sorted({k for k in renamed if renamed.count(k) > 1})
        if clashes:
            raise DatasetError(f"rename_map: several features would be named {clashes}")
        self._inverse = {v: k for k, v in self.rename_map.items()}

        self.delta_timestamps = self._resolve_deltas(delta_timestamps, chunk_size)
        self._delta_idx = {
            k: np.array([round(d * self.meta.fps) for d in v]) for k, v in self.delta_timestamps.items()
        }

        all_eps = self.meta.episodes
        if episodes is None:
            chosen = list(range(len(all_eps)))
        else:
            bad = sorted(
                {e for e in episodes if not isinstance(e, (int, np.integer)) or not 0 <= e < len(all_eps)}
            )
            if bad:
                raise DatasetError(f"episodes: {bad} are not in {self.root} (episodes 0..{len(all_eps) - 1})")
            chosen = sorted(set(int(e) for e in episodes))
            if not chosen:
                raise DatasetError("episodes: got an empty list")
        self.episodes = chosen
        self._eps = [all_eps[e] for e in chosen]
        self._load_frames()
        self._check_videos()

    # ------------------------------------------------------------------------------------------
    # Opening

    def _resolve_deltas(
        self, delta_timestamps: dict[str, list[float]] | None, chunk_size: int | None
    ) -> dict[str, list[float]]:
        fps, feats = self.meta.fps, self.meta.features
        out: dict[str, list[float]] = {}
        for key, deltas in (delta_timestamps or {}).items():
            native = self._inverse.get(key, key)
            if native not in feats:
                raise DatasetError(
                    f"delta_timestamps: {key!r} is not a feature ({sorted(self._renamed(feats))})"
                )
            if not isinstance(deltas, (list, tuple)) or not deltas:
                raise DatasetError(
                    f"delta_timestamps[{key!r}]: got {deltas!r}, expected a non-empty list of seconds"
                )
            off = [d for d in deltas if abs(d * fps - round(d * fps)) / fps > self.tolerance_s]
            if off:
                raise DatasetError(
                    f"delta_timestamps[{key!r}]: {off} are not multiples of 1/fps = {1 / fps:.6g} s "
                    f"(within tolerance_s={self.tolerance_s})"
                )
            out[native] = [float(d) for d in deltas]
        if chunk_size is not None:
            if not isinstance(chunk_size, int) or chunk_size <= 0:
                raise DatasetError(f"chunk_size: got {chunk_size!r}, expected a positive integer")
            if "action" not in feats:
                raise DatasetError(f"chunk_size: {self.root} has no 'action' feature")
            if "action" in out:
                raise DatasetError(
                    "chunk_size and delta_timestamps['action'] both set the action chunk; pass one"
                )
            out["action"] = [i / fps for i in range(chunk_size)]
        return out

    def _load_frames(self) -> None:
        feats = data_features(self.meta.features)
        expected = set(feats)
        by_file: dict[Path, list[EpisodeMeta]] = {}
        for ep in self._eps:
            by_file.setdefault(ep.data_file, []).append(ep)
        pieces: list[tuple[list[EpisodeMeta], dict[str, Any]]] = []
        for path, eps in by_file.items():
            try:
                names = pq.read_schema(path).names
            except FileNotFoundError:
                raise DatasetError(
                    f"{path}: data file of episodes {[e.index for e in eps]} is missing"
                ) from None
            except (pa.ArrowException, OSError) as e:
                raise DatasetError(f"{path}: not a readable parquet file ({e})") from e
            missing, extra = sorted(expected - set(names)), sorted(set(names) - expected)
            if missing or extra:
                raise DatasetError(
                    f"{path}: columns disagree with meta/info.json: missing {missing}, unknown {extra}"
                )
            try:
                table = pq.read_table(path)
            except (pa.ArrowException, OSError) as e:
                raise DatasetError(f"{path}: not a readable parquet file ({e})") from e
            ep_col = table.column("episode_index").to_numpy()
            order = np.argsort(ep_col, kind="stable")  # rows grouped by episode, in file order within one
            sorted_eps = ep_col[order]
            take = []
            for ep in eps:
                lo, hi = np.searchsorted(sorted_eps, [ep.index, ep.index + 1])
                if hi - lo != ep.length:
                    raise DatasetError(
                        f"{path}: episode {ep.index} has {hi - lo} rows, metadata says {ep.length} frames"
                    )
                take.append(order[lo:hi])
            sub = table.take(pa.array(np.concatenate(take)))
            fi, ix = sub.column("frame_index").to_numpy(), sub.column("index").to_numpy()
            want_fi = np.concatenate([np.arange(ep.length) for ep in eps])
            want_ix = np.concatenate([np.arange(ep.from_index, ep.to_index) for ep in eps])
            if not (np.array_equal(fi, want_fi) and np.array_equal(ix, want_ix)):
                ends = np.cumsum([ep.length for ep in eps])
                bad = int(np.flatnonzero((fi != want_fi) | (ix != want_ix))[0])
                k = int(np.searchsorted(ends, bad, side="right"))
                ep, a = eps[k], int(ends[k] - eps[k].length)
                raise DatasetError(
                    f"{path}: episode {ep.index} rows have frame_index {fi[a : a + 5].tolist()}... and index "
                    f"{ix[a]}..{ix[a + ep.length - 1]}; metadata says frames 0..{ep.length - 1} with index "
                    f"{ep.from_index}..{ep.to_index - 1}"
                )
            pieces.append((eps, {k: _column_values(sub.column(k), k, feats[k], path) for k in feats}))

        # Items follow the files' order (the episodes' order in any dataset LeRobot or we write).
        self._eps = [ep for eps, _ in pieces for ep in eps]
        self.episodes = [ep.index for ep in self._eps]
        self._cols: dict[str, Any] = {}
        for k, ft in feats.items():
            parts = [cols[k] for _, cols in pieces]
            self._cols[k] = [b for p in parts for b in p] if ft["dtype"] == "image" else np.concatenate(parts)
        lengths = np.array([ep.length for ep in self._eps])
        self._starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self._frame_ep = np.repeat(np.arange(len(self._eps)), lengths)
        self._len = int(lengths.sum())

        for k, ft in feats.items():
            if k.startswith(NAN_CHECKED_PREFIXES) and ft["dtype"].startswith("float"):
                v = self._cols[k].reshape(self._len, -1)
                bad = ~np.isfinite(v).all(axis=1)
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    ep = self._eps[self._frame_ep[i]]
                    raise DatasetError(
                        f"{ep.data_file}: feature {k!r} holds NaN or infinite values at episode {ep.index}, "
                        f"frame {i - self._starts[self._frame_ep[i]]} ({int(bad.sum())} frames in all): "
                        f"{v[i].tolist()}"
                    )
        tasks = self._cols["task_index"]
        if len(tasks) and (tasks.min() < 0 or tasks.max() >= len(self.meta.tasks)):
            raise DatasetError(
                f"{self.root}: task_index values reach {int(tasks.max())}, but meta holds "
                f"{len(self.meta.tasks)} tasks"
            )

    def _check_videos(self) -> None:
        fps = self.meta.fps
        needed: dict[Path, tuple[float, int, str]] = {}
        for ep in self._eps:
            for key, (path, start) in ep.videos.items():
                end = start + ep.length / fps
                if path not in needed or end > needed[path][0]:
                    needed[path] = (end, ep.index, key)
        for path, (end, e, key) in needed.items():
            if not path.is_file():
                raise DatasetError(f"{path}: video file of episode {e}, camera {key!r}, is missing")
            info = probe_video(path)
            h, w, _ = self.meta.features[key]["shape"]
            if (info.height, info.width) != (h, w):  # the shape would go into the trained checkpoint
                raise VideoError(
                    f"{path}: frames are {info.height} x {info.width}, but info.json gives camera {key!r} "
                    f"shape {list(self.meta.features[key]['shape'])} ({h} x {w}, height x width)"
                )
            if info.duration_s + 0.5 / fps < end:
                raise VideoError(
                    f"{path}: holds {info.duration_s:.4f} s of video ({info.frames} frames), but episode {e} "
                    f"(camera {key!r}) needs frames up to {end:.4f} s: the video is shorter than its episode"
                )

    # ------------------------------------------------------------------------------------------
    # Access

    def _renamed(self, d: dict[str, Any]) -> dict[str, Any]:
        return {self.rename_map.get(k, k): v for k, v in d.items()}

    @property
    def fps(self) -> int:
        return self.meta.fps

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        """The features, under their renamed keys."""
        return self._renamed(self.meta.features)

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]] | None:
        """meta/stats.json of the whole dataset (all episodes), under the renamed keys."""
        return None if self.meta.stats is None else self._renamed(self.meta.stats)

    @property
    def camera_keys(self) -> list[str]:
        return [self.rename_map.get(k, k) for k in self.meta.camera_keys]

    @property
    def num_episodes(self) -> int:
        return len(self._eps)

    @property
    def num_frames(self) -> int:
        return self._len

    def __len__(self) -> int:
        return self._len

    def episode_bounds(self, position: int) -> tuple[int, int]:
        """[start, end) item indices of the `position`-th selected episode (for episode-aware samplers)."""
        s = int(self._starts[position])
        return s, s + self._eps[position].length

    def _window(self, key: str, local: int, length: int) -> tuple[np.ndarray, np.ndarray] | None:
        if key not in self._delta_idx:
            return None
        q = local + self._delta_idx[key]
        return np.clip(q, 0, length - 1), (q < 0) | (q >= length)

    def _camera(self, key: str, start: int, ep: EpisodeMeta, frames: np.ndarray) -> torch.Tensor:
        rows = start + frames  # items of the episode's frames
        if self.meta.features[key]["dtype"] == "video":
            path, from_ts = ep.videos[key]
            ts = [from_ts + float(t) for t in self._cols["timestamp"][rows]]
            try:
                pix = decode_frames(path, ts, self.tolerance_s)
            except VideoError as err:
                raise VideoError(f"episode {ep.index}, camera {key!r}: {err}") from err
        else:
            pix = np.stack([decode_png(self._cols[key][r], f"{ep.data_file} {key} row {r}") for r in rows])
        return torch.from_numpy(pix).permute(0, 3, 1, 2).float().div_(255.0)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        if not isinstance(idx, (int, np.integer)):
            raise TypeError(f"index: got {type(idx).__name__}, expected an int")
        if idx < 0:
            idx += self._len
        if not 0 <= idx < self._len:
            raise IndexError(f"index {idx} out of range for a dataset of {self._len} frames")
        idx = int(idx)
        pos = int(self._frame_ep[idx])
        ep = self._eps[pos]
        start = int(self._starts[pos])
        local = idx - start
        item: dict[str, Any] = {}
        for key, ft in self.meta.features.items():
            win = self._window(key, local, ep.length)
            if ft["dtype"] in VISUAL_DTYPES:
                frames = win[0] if win is not None else np.array([local])
                img = self._camera(key, start, ep, frames)
                if win is None or len(frames) == 1:
                    img = img[0]  # LeRobot squeezes a single frame to [3, H, W]
                if self.image_transforms is not None:
                    img = self.image_transforms(img)
                item[key] = img
            elif ft["dtype"] == "string":
                item[key] = (
                    self._cols[key][idx] if win is None else [self._cols[key][start + i] for i in win[0]]
                )
            elif win is None:
                item[key] = torch.from_numpy(np.asarray(self._cols[key][idx]).copy())
            else:
                item[key] = torch.from_numpy(np.ascontiguousarray(self._cols[key][start + win[0]]))
            if win is not None:
                item[f"{key}_is_pad"] = torch.from_numpy(win[1])
        item["task"] = self.meta.tasks[int(self._cols["task_index"][idx])]
        if self.rename_map:
            item = {self._rename_item_key(k): v for k, v in item.items()}
        return item

    def _rename_item_key(self, k: str) -> str:
        if k in self.rename_map:
            return self.rename_map[k]
        if k.endswith("_is_pad") and k[: -len("_is_pad")] in self.rename_map:
            return self.rename_map[k[: -len("_is_pad")]] + "_is_pad"
        return k

    def __repr__(self) -> str:
        return (
            f"LeRobotDataset({str(self.root)!r}, {self.meta.version}, {self.num_episodes} episodes, "
            f"{self.num_frames} frames, fps={self.fps}, cameras={self.camera_keys})"
        )


# --------------------------------------------------------------------------------------------------
# Several datasets as one


def _signature(ds: LeRobotDataset) -> dict[str, tuple[str, tuple[int, ...]]]:
    out = {}
    for k, ft in ds.features.items():
        kind = "camera" if ft["dtype"] in VISUAL_DTYPES else ft["dtype"]
        out[k] = (kind, tuple(ft["shape"]))
    return out


class MultiLeRobotDataset(torch.utils.data.Dataset):
    """Several LeRobotDatasets (each with its own episodes, rename_map, ...) as one training set.

    Their features, after renaming, must agree in name, dtype and shape (cameras stored as video or as
    images count as the same), and their fps must be equal. Items gain `dataset_index`.
    """

    def __init__(self, datasets: Sequence[LeRobotDataset]):
        datasets = list(datasets)
        if not datasets:
            raise DatasetError("MultiLeRobotDataset: got no datasets")
        for i, d in enumerate(datasets):
            if not isinstance(d, LeRobotDataset):
                raise DatasetError(
                    f"MultiLeRobotDataset: dataset {i} is a {type(d).__name__}, expected LeRobotDataset"
                )
        ref = _signature(datasets[0])
        problems = []
        for i, d in enumerate(datasets[1:], 1):
            sig = _signature(d)
            missing, extra = sorted(set(ref) - set(sig)), sorted(set(sig) - set(ref))
            diff = [f"{k}: {ref[k]} vs {sig[k]}" for k in ref if k in sig and ref[k] != sig[k]]
            if d.fps != datasets[0].fps:
                diff.append(f"fps: {datasets[0].fps} vs {d.fps}")
            if missing or extra or diff:
                problems.append(
                    f"dataset {i} ({d.root}) against dataset 0 ({datasets[0].root}): lacks {missing}, "
                    f"has in addition {extra}, differs in {diff}"
                )
        if problems:
            raise DatasetError(
                "MultiLeRobotDataset: the datasets' features do not agree (rename_map renames keys per "
                "dataset):\n  " + "\n  ".join(problems)
            )
        self.datasets = datasets
        self._ends = np.cumsum([len(d) for d in datasets])

    @property
    def fps(self) -> int:
        return self.datasets[0].fps

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return self.datasets[0].features

    @property
    def camera_keys(self) -> list[str]:
        return self.datasets[0].camera_keys

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]] | None:
        """The datasets' stats aggregated (count-weighted), or None if one of them has none."""
        all_stats = [d.stats for d in self.datasets]
        if any(s is None for s in all_stats):
            return None
        return aggregate_stats(all_stats)

    @property
    def num_episodes(self) -> int:
        return sum(d.num_episodes for d in self.datasets)

    @property
    def num_frames(self) -> int:
        return int(self._ends[-1])

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __getitem__(self, idx: int) -> dict[str, Any]:
        n = len(self)
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"index {idx} out of range for {n} frames")
        i = int(np.searchsorted(self._ends, idx, side="right"))
        start = 0 if i == 0 else int(self._ends[i - 1])
        item = self.datasets[i][idx - start]
        item["dataset_index"] = torch.tensor(i)
        return item


def concat(datasets: Sequence[LeRobotDataset | str | Path], **kwargs: Any) -> MultiLeRobotDataset:
    """One training set from several datasets; paths and repo ids are opened with `kwargs`."""
    opened = [d if isinstance(d, LeRobotDataset) else LeRobotDataset(d, **kwargs) for d in datasets]
    return MultiLeRobotDataset(opened)
