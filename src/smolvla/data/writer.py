"""DatasetWriter: records episodes into a LeRobot v3.0 dataset that survives being killed at any moment.

    writer = DatasetWriter.create("data/reach", fps=30, features={
        "observation.state": {"dtype": "float32", "shape": [4], "names": ["x", "y", "z", "gripper"]},
        "action": {"dtype": "float32", "shape": [4], "names": None},
        "observation.images.corner2": {"dtype": "video", "shape": [224, 224, 3], "names": None},
    })
    for step in episode:
        writer.add_frame({"observation.state": ..., "action": ..., "observation.images.corner2": rgb,
                          "task": "reach the goal"})
    writer.save_episode()
    writer.finalize()  # or DatasetWriter.resume(root) after a crash, then more episodes

Crash safety. Each saved episode is one atomic commit, and `meta/info.json` is the commit point:
1. While frames arrive, each camera is encoded into a temporary MP4 in `.staging/`.
2. `save_episode` moves each finished MP4 into `videos/` as a file of its own (a fresh file index that
   nothing refers to yet), rewrites the current data parquet with the episode's rows appended, then
   `meta/tasks.parquet`, the current `meta/episodes/` parquet and `meta/stats.json`, and last
   `meta/info.json` with the new totals. Every file is written to `.staging/`, fsynced, and renamed over
   its target, so each one is either old or new, never partial.
3. Until info.json is renamed, the new episode only exists as rows past the committed totals (data rows
   after `total_frames`, an episodes row after `total_episodes`, a task after `total_tasks`) and files
   nothing refers to. Readers, ours and LeRobot's, take the totals from info.json and never look there.
   `resume` removes them and rebuilds stats.json from the committed episodes.

Video files. Rewriting a camera's MP4 for every saved episode (what LeRobot does) costs time quadratic in
the file's length. Instead each episode's MP4 is committed as its own file, and the episodes of a file
that reaches `video_files_size_in_mb` (or, at `finalize`/`resume`, of the last one) are joined into one
MP4 by copying packets (no re-encoding; frame `i` of an episode stays at exactly `from_timestamp + i/fps`
in stream ticks). The joined file takes the index of the group's first episode file, which it extends
(that episode's metadata stays true), the other episodes' metadata then moves to it, and the per-episode
files are deleted last: at every instant each episode's metadata points at a file holding its frames.
A dataset that was never finalized is valid, just with one video file per episode.

The data parquet of the session is rewritten at each saved episode (parquet cannot be appended to
safely), so a data file is also closed after `MAX_ROWS_PER_DATA_FILE` frames to bound that cost;
episodes metadata files likewise after `MAX_EPISODES_PER_META_FILE` episodes.
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from smolvla.data.errors import DatasetError, VideoError
from smolvla.data.format import (
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    DATA_FILES_SIZE_IN_MB,
    DATA_PATH,
    DEFAULT_FEATURES,
    EPISODES_DIR,
    EPISODES_PATH,
    INFO_PATH,
    NUMERIC_DTYPES,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_FILES_SIZE_IN_MB,
    VIDEO_PATH,
    VISUAL_DTYPES,
    Staging,
    chunk_file,
    data_schema,
    episodes_schema,
    fsync_dir,
    linear_index,
    read_json,
    read_tasks_parquet,
    tasks_table,
)
from smolvla.data.stats import (
    STAT_NAMES,
    ImageStats,
    StatsAccumulator,
    stats_from_columns,
    stats_to_json,
    vector_stats,
)
from smolvla.data.video import (
    PIX_FMTS,
    STREAM_CODECS,
    SVTAV1_MIN_SIDE,
    VideoEncoder,
    concat_videos,
    encode_png,
    encoder_name,
)

# Measured on Meta-World renders (corner2 camera, 224x224 and 128x128; `smolvla bench data_loader`): H.264
# at crf 23 matches AV1 at crf 30 (LeRobot's default) in quality (PSNR 33.2 vs 33.3 dB at 224 px),
# decodes random frames 1.4-1.6x faster (790 vs 480 frames/s at 224 px on one core), feeds a 2-worker
# DataLoader ~1.2x faster, and makes files ~1/3 smaller; recording speed is the same.
DEFAULT_VIDEO_CODEC = "h264"
DEFAULT_CRF = {"libsvtav1": 30, "libx264": 23}
MAX_ROWS_PER_DATA_FILE = 50_000
MAX_EPISODES_PER_META_FILE = 1_000
_LOCK_NAME = "writer.lock"

# Test hook: called with the name of each step of a commit (the crash tests kill the process there).
_crash_hook: Callable[[str], None] | None = None


def _point(name: str) -> None:
    if _crash_hook is not None:
        _crash_hook(name)


@dataclass(frozen=True)
class VideoSettings:
    """Encoder settings for the camera videos (the codec itself is `DatasetWriter.create(video_codec=)`)."""

    pix_fmt: str = "yuv420p"
    g: int | None = 2  # a keyframe every 2 frames: random access decodes at most one extra frame
    crf: int | None = None  # None: DEFAULT_CRF of the codec
    preset: int | str | None = None  # None: 12 for libsvtav1 (LeRobot's), x264's own default for h264

    def __post_init__(self) -> None:
        if self.pix_fmt not in PIX_FMTS:
            raise DatasetError(
                f"VideoSettings.pix_fmt: got {self.pix_fmt!r}, expected one of {list(PIX_FMTS)}"
            )
        if self.g is not None and (not isinstance(self.g, int) or self.g < 1):
            raise DatasetError(f"VideoSettings.g: got {self.g!r}, expected a positive integer or None")
        if self.crf is not None and (not isinstance(self.crf, int) or not 0 <= self.crf <= 63):
            raise DatasetError(f"VideoSettings.crf: got {self.crf!r}, expected an integer in [0, 63] or None")


@dataclass
class _Group:
    """The video file of one camera being filled: its episodes still sit in files of their own."""

    first: int  # linear file index of the group's file, and of its first episode's own file
    episodes: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    nbytes: int = 0


@dataclass
class _OpenData:
    """The data parquet file this session appends to (rewritten whole at each episode)."""

    linear: int
    table: pa.Table
    nbytes: int


def _check_features(features: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(features, dict) or not features:
        raise DatasetError(f"features: got {features!r}, expected a non-empty mapping of name to feature")
    out: dict[str, dict[str, Any]] = {}
    allowed = [*NUMERIC_DTYPES, *VISUAL_DTYPES]
    for name, ft in features.items():
        where = f"features[{name!r}]"
        if not isinstance(name, str) or not name or "/" in name:
            raise DatasetError(f"{where}: a feature name must be a non-empty string without '/'")
        if name in DEFAULT_FEATURES or name == "task":
            raise DatasetError(
                f"{where}: {name!r} is filled by the writer (reserved: {[*DEFAULT_FEATURES, 'task']})"
            )
        if not isinstance(ft, dict):
            raise DatasetError(f"{where}: got {type(ft).__name__}, expected a dict with 'dtype' and 'shape'")
        dtype, shape = ft.get("dtype"), ft.get("shape")
        if dtype not in allowed:
            raise DatasetError(f"{where}.dtype: got {dtype!r}, expected one of {allowed}")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) and s > 0 for s in shape):
            raise DatasetError(f"{where}.shape: got {shape!r}, expected a list of positive integers")
        shape = list(shape)
        names = ft.get("names")
        if dtype in VISUAL_DTYPES:
            if len(shape) != 3 or shape[2] != 3:
                raise DatasetError(
                    f"{where}.shape: got {shape}, expected [height, width, 3] for an RGB camera"
                )
            names = names if names is not None else ["height", "width", "channels"]
        elif len(shape) != 1:
            raise DatasetError(f"{where}.shape: got {shape}, expected [D] (vectors) or [1] (scalars)")
        elif isinstance(names, list) and len(names) != shape[0]:
            raise DatasetError(f"{where}.names: got {len(names)} names for shape {shape}")
        out[name] = {"dtype": dtype, "shape": shape, "names": names}
        if "info" in ft and dtype != "video":
            out[name]["info"] = copy.deepcopy(ft["info"])
    return out


def _video_info(ft: dict[str, Any], fps: int, encoder: str, s: VideoSettings, crf: int) -> dict[str, Any]:
    """The `info` block LeRobot keeps for a video feature (stream fields, then encoder fields)."""
    h, w, _ = ft["shape"]
    preset = s.preset if s.preset is not None else (12 if encoder == "libsvtav1" else None)
    return {
        "video.height": h,
        "video.width": w,
        "video.codec": STREAM_CODECS[encoder],
        "video.pix_fmt": s.pix_fmt,
        "video.fps": fps,
        "video.channels": 3,
        "has_audio": False,
        "video.g": s.g,
        "video.crf": crf,
        "video.preset": preset,
        "video.fast_decode": 0,
        "video.video_backend": "pyav",
        "video.extra_options": {"bf": 0} if encoder == "libx264" else {},
        "is_depth_map": False,
    }


def _settings_from_info(info: dict[str, Any]) -> tuple[str, VideoSettings]:
    codec_names = {v: k for k, v in STREAM_CODECS.items()}
    for ft in info["features"].values():
        if ft.get("dtype") == "video" and ft.get("info"):
            vi = ft["info"]
            enc = codec_names.get(vi.get("video.codec"), vi.get("video.codec"))
            if enc not in STREAM_CODECS:
                raise DatasetError(
                    f"meta/info.json: videos use codec {vi.get('video.codec')!r}; resume can append "
                    f"{sorted(codec_names)} videos only"
                )
            return enc, VideoSettings(
                pix_fmt=vi.get("video.pix_fmt", "yuv420p"),
                g=vi.get("video.g", 2),
                crf=vi.get("video.crf"),
                preset=vi.get("video.preset"),
            )
    return encoder_name(DEFAULT_VIDEO_CODEC), VideoSettings()


def _lock(path: Path):
    """An exclusive lock on `path` (a second writer on the same dataset fails instead of corrupting it)."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): no lock, one writer per dataset is the caller's business
        return None
    f = open(path, "a+")  # noqa: SIM115 - held open for the writer's lifetime
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise DatasetError(f"{path.parent.parent}: another DatasetWriter is writing this dataset") from None
    return f


class DatasetWriter:
    """Writes a LeRobot v3.0 dataset one frame at a time. Make one with `create` or `resume`."""

    def __init__(self, *_: Any, **__: Any):
        raise TypeError("use DatasetWriter.create(root, fps=..., features=...) or DatasetWriter.resume(root)")

    # ------------------------------------------------------------------------------------------
    # Construction

    @classmethod
    def _blank(cls, root: Path, info: dict[str, Any], codec: str, video: VideoSettings) -> DatasetWriter:
        self = object.__new__(cls)
        self.root = root
        self._info = info
        self.fps = int(info["fps"])
        feats = info["features"]
        self._user = {k: v for k, v in feats.items() if k not in DEFAULT_FEATURES}
        self._video_keys = [k for k, v in feats.items() if v["dtype"] == "video"]
        self._image_keys = [k for k, v in feats.items() if v["dtype"] == "image"]
        self._encoder = encoder_name(codec)
        self._video = video
        self._crf = video.crf if video.crf is not None else DEFAULT_CRF[self._encoder]
        self._staging = Staging(root)
        self._staging.dir.mkdir(parents=True, exist_ok=True)
        self._lockfile = _lock(self._staging.dir / _LOCK_NAME)
        self._chunks = int(info["chunks_size"])
        self._data_cap = float(info["data_files_size_in_mb"]) * 2**20
        self._video_cap = float(info["video_files_size_in_mb"]) * 2**20
        self._schema = data_schema(feats)
        self._ep_schema = episodes_schema(feats, STAT_NAMES)
        self._tasks: list[str] = []
        self._task_ids: dict[str, int] = {}
        self._stats = StatsAccumulator()
        self._episodes = 0
        self._frames = 0
        self._meta_tables: dict[int, pa.Table] = {}  # linear index -> rows of that episodes file
        self._ep_meta_file: list[int] = []  # episode -> linear index of its episodes file
        self._meta_cur: int | None = None  # the episodes file this session appends to
        self._meta_next = 0
        self._data: _OpenData | None = None
        self._data_next = 0
        self._groups: dict[str, _Group] = {k: _Group(first=0) for k in self._video_keys}
        self._closed = False
        self._broken: str | None = None
        self._reset_episode()
        return self

    @classmethod
    def create(
        cls,
        root: str | Path,
        *,
        fps: int,
        features: dict[str, dict[str, Any]],
        robot_type: str | None = None,
        video_codec: str = DEFAULT_VIDEO_CODEC,
        video: VideoSettings | None = None,
        chunks_size: int = CHUNKS_SIZE,
        data_files_size_in_mb: int = DATA_FILES_SIZE_IN_MB,
        video_files_size_in_mb: int = VIDEO_FILES_SIZE_IN_MB,
    ) -> DatasetWriter:
        """A new, empty dataset at `root` (which must not exist, or be an empty folder)."""
        root = Path(root)
        if not isinstance(fps, int) or isinstance(fps, bool) or fps <= 0:
            raise DatasetError(f"fps: got {fps!r}, expected a positive integer")
        for name, v in [
            ("chunks_size", chunks_size),
            ("data_files_size_in_mb", data_files_size_in_mb),
            ("video_files_size_in_mb", video_files_size_in_mb),
        ]:
            if not isinstance(v, (int, float)) or v <= 0:
                raise DatasetError(f"{name}: got {v!r}, expected a positive number")
        if (root / INFO_PATH).exists():
            raise DatasetError(f"{root} already holds a dataset; use DatasetWriter.resume({str(root)!r})")
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise DatasetError(f"{root} exists and is not an empty folder; pick a new root")
        video = video or VideoSettings()
        enc = encoder_name(video_codec)
        crf = video.crf if video.crf is not None else DEFAULT_CRF[enc]
        feats = _check_features(features)
        for name, ft in feats.items():
            if ft["dtype"] == "video":
                h, w, _ = ft["shape"]
                if enc == "libsvtav1" and min(h, w) < SVTAV1_MIN_SIDE:
                    raise DatasetError(
                        f"features[{name!r}].shape: {h}x{w} frames are too small for libsvtav1 (at least "
                        f"{SVTAV1_MIN_SIDE} px per side); use video_codec='h264'"
                    )
                if video.pix_fmt == "yuv420p" and (h % 2 or w % 2):
                    raise DatasetError(
                        f"features[{name!r}].shape: {h}x{w} frames cannot be stored as yuv420p video "
                        "(height and width must be even)"
                    )
                ft["info"] = _video_info(ft, fps, enc, video, crf)
        feats.update(copy.deepcopy(DEFAULT_FEATURES))
        has_video = any(ft["dtype"] == "video" for ft in feats.values())
        info = {
            "codebase_version": CODEBASE_VERSION,
            "fps": fps,
            "features": feats,
            "total_episodes": 0,
            "total_frames": 0,
            "total_tasks": 0,
            "chunks_size": chunks_size,
            "data_files_size_in_mb": data_files_size_in_mb,
            "video_files_size_in_mb": video_files_size_in_mb,
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if has_video else None,
            "robot_type": robot_type,
            "splits": {},
        }
        root.mkdir(parents=True, exist_ok=True)
        self = cls._blank(root, info, enc, video)
        self._staging.write_json(root / INFO_PATH, info)
        self._staging.sync()
        return self

    @classmethod
    def resume(cls, root: str | Path) -> DatasetWriter:
        """Continues a v3.0 dataset: drops whatever an interrupted session left uncommitted, joins the last
        per-episode video files, and appends new episodes after the committed ones."""
        root = Path(root)
        info = read_json(root / INFO_PATH, "meta/info.json")
        if info.get("codebase_version") != CODEBASE_VERSION:
            raise DatasetError(
                f"{root}: codebase_version {info.get('codebase_version')!r}; the writer appends to "
                f"{CODEBASE_VERSION} datasets only"
            )
        for name, ft in info["features"].items():
            if ft.get("dtype") not in (*NUMERIC_DTYPES, *VISUAL_DTYPES):
                raise DatasetError(
                    f"{root}: feature {name!r} has dtype {ft.get('dtype')!r}, which the writer cannot append"
                )
        codec, video = _settings_from_info(info)
        self = cls._blank(root, info, codec, video)
        try:
            self._recover()
        except BaseException:
            self._release()
            raise
        return self

    def _recover(self) -> None:
        root, info = self.root, self._info
        self._staging.clear(keep=(_LOCK_NAME,))
        n_eps, n_frames, n_tasks = (int(info[k]) for k in ("total_episodes", "total_frames", "total_tasks"))

        # Episodes metadata: keep the committed rows, drop files holding only uncommitted ones.
        files = sorted((root / EPISODES_DIR).glob("*/*.parquet"))
        rows_by_ep: dict[int, dict[str, Any]] = {}
        for path in files:
            lin = self._linear(path)
            table = pq.read_table(path)
            eps = table.column("episode_index").to_pylist()
            keep = [i for i, e in enumerate(eps) if e < n_eps]
            if not keep:
                path.unlink()
                continue
            if len(keep) < len(eps):
                table = table.take(keep)
                self._staging.write_parquet(path, table)
            self._meta_tables[lin] = table
            for row in table.to_pylist():
                rows_by_ep[row["episode_index"]] = {**row, "_meta": lin}
        if sorted(rows_by_ep) != list(range(n_eps)):
            raise DatasetError(
                f"{root}: meta/info.json commits {n_eps} episodes but meta/episodes/ holds episodes "
                f"{sorted(rows_by_ep)[:20]}; the dataset is damaged beyond what resume repairs"
            )
        rows = [rows_by_ep[e] for e in range(n_eps)]
        self._ep_meta_file = [r["_meta"] for r in rows]
        self._meta_next = max(self._meta_tables, default=-1) + 1

        # Tasks beyond total_tasks were added by an uncommitted episode.
        if n_tasks:
            tasks = read_tasks_parquet(root / TASKS_PATH)
            if len(tasks) < n_tasks:
                raise DatasetError(
                    f"{root}: meta/tasks.parquet holds {len(tasks)} tasks, info.json says {n_tasks}"
                )
            if len(tasks) > n_tasks:
                tasks = tasks[:n_tasks]
                self._staging.write_parquet(root / TASKS_PATH, tasks_table(tasks))
            self._tasks = tasks
            self._task_ids = {t: i for i, t in enumerate(tasks)}
        elif (root / TASKS_PATH).exists():
            (root / TASKS_PATH).unlink()

        # Data: cut rows past total_frames, delete files nothing refers to.
        used = {self._linear_cf(r["data/chunk_index"], r["data/file_index"]) for r in rows}
        for path in sorted((root / "data").glob("*/*.parquet")):
            lin = self._linear(path)
            if lin not in used:
                path.unlink()
                continue
            meta = pq.read_metadata(path)
            if meta.num_rows and lin == max(used):
                table = pq.read_table(path)
                idx = table.column("index").to_numpy()
                if (idx >= n_frames).any():
                    self._staging.write_parquet(path, table.filter(pa.array(idx < n_frames)))
        self._data_next = max(used, default=-1) + 1

        # Videos: delete files nothing refers to, then join the trailing per-episode files.
        for key in self._video_keys:
            refs = [
                (self._linear_cf(r[f"videos/{key}/chunk_index"], r[f"videos/{key}/file_index"]), r)
                for r in rows
            ]
            used_v = {lin for lin, _ in refs}
            for path in sorted((root / "videos" / key).glob("*/*.mp4")):
                if self._linear(path) not in used_v:
                    path.unlink()
            users = Counter(lin for lin, _ in refs)
            run: list[int] = []
            for e in reversed(range(n_eps)):
                lin, r = refs[e]
                alone = users[lin] == 1 and abs(r[f"videos/{key}/from_timestamp"]) < 1e-9
                if not alone or (run and lin != refs[run[-1]][0] - 1):
                    break
                run.append(e)
            run.reverse()
            grp = _Group(first=refs[run[0]][0] if run else max(used_v, default=-1) + 1)
            for e in run:
                grp.episodes.append(e)
                grp.frames.append(int(rows[e]["length"]))
            self._groups[key] = grp
            self._close_group(key)

        # Stats: rebuilt from the committed episodes.
        for r in rows:
            self._stats.add(stats_from_columns(r))
        self._episodes, self._frames = n_eps, n_frames
        if n_eps:
            self._staging.write_json(root / STATS_PATH, stats_to_json(self._stats.result()))
        elif (root / STATS_PATH).exists():  # written by an episode that never committed
            (root / STATS_PATH).unlink()
        self._staging.sync()
        self._staging.write_json(root / INFO_PATH, self._info)
        self._staging.sync()

    # ------------------------------------------------------------------------------------------
    # Paths

    def _linear(self, path: Path) -> int:
        chunk, file = int(path.parent.name.split("-")[-1]), int(path.stem.split("-")[-1])
        return linear_index(chunk, file, self._chunks)

    def _linear_cf(self, chunk: Any, file: Any) -> int:
        return linear_index(int(chunk), int(file), self._chunks)

    def _video_path(self, key: str, linear: int) -> Path:
        c, f = chunk_file(linear, self._chunks)
        return self.root / VIDEO_PATH.format(video_key=key, chunk_index=c, file_index=f)

    def _data_path(self, linear: int) -> Path:
        c, f = chunk_file(linear, self._chunks)
        return self.root / DATA_PATH.format(chunk_index=c, file_index=f)

    def _meta_path(self, linear: int) -> Path:
        c, f = chunk_file(linear, self._chunks)
        return self.root / EPISODES_PATH.format(chunk_index=c, file_index=f)

    # ------------------------------------------------------------------------------------------
    # Recording

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        """The dataset's features, as in meta/info.json (a copy)."""
        return copy.deepcopy(self._info["features"])

    @property
    def num_episodes(self) -> int:
        """Episodes saved so far (committed)."""
        return self._episodes

    @property
    def num_frames(self) -> int:
        """Frames of the saved episodes."""
        return self._frames

    @property
    def episode_length(self) -> int:
        """Frames added to the episode being recorded."""
        return self._n

    def _check_usable(self) -> None:
        if self._closed:
            raise DatasetError(
                f"{self.root}: this writer was finalized; use DatasetWriter.resume to add episodes"
            )
        if self._broken:
            raise DatasetError(
                f"{self.root}: the writer stopped after an error ({self._broken}); the dataset holds the "
                "episodes saved before it. DatasetWriter.resume(root) continues from there"
            )

    def _reset_episode(self) -> None:
        self._n = 0
        self._buf: dict[str, list[Any]] = {k: [] for k, v in self._user.items() if v["dtype"] != "video"}
        self._task_buf: list[str] = []
        self._encoders: dict[str, VideoEncoder] = {}
        self._img_stats: dict[str, ImageStats] = {}

    def _value(self, name: str, ft: dict[str, Any], v: Any, where: str) -> np.ndarray:
        if hasattr(v, "detach") and hasattr(v, "numpy"):  # a torch tensor
            v = v.detach().cpu().numpy()
        dtype, shape = ft["dtype"], tuple(ft["shape"])
        if dtype in VISUAL_DTYPES:
            if not isinstance(v, np.ndarray) or v.dtype != np.uint8 or v.ndim != 3:
                got = f"{type(v).__name__} {getattr(v, 'dtype', '')} {getattr(v, 'shape', '')}".strip()
                raise DatasetError(
                    f"{where}: camera {name!r} got {got}, expected a uint8 array {list(shape)}"
                )
            if v.shape == (3, shape[0], shape[1]) and v.shape != shape:
                v = v.transpose(1, 2, 0)  # channels first -> channels last
            if v.shape != shape:
                raise DatasetError(self._shape_msg(where, name, v.shape, shape))
            return v
        if not isinstance(v, np.ndarray):
            raise DatasetError(
                f"{where}: feature {name!r} got {type(v).__name__}, expected a numpy array of shape "
                f"{list(shape)} and dtype {dtype}"
            )
        if v.shape != shape:
            raise DatasetError(self._shape_msg(where, name, v.shape, shape))
        if v.dtype != np.dtype(dtype):
            raise DatasetError(
                f"{where}: feature {name!r} has dtype {v.dtype}, expected {dtype} (use .astype(np.{dtype}))"
            )
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            bad = np.flatnonzero(~np.isfinite(v)).tolist()
            raise DatasetError(
                f"{where}: feature {name!r} holds NaN or infinite values at indices {bad}: {v.tolist()}"
            )
        return v

    def _shape_msg(self, where: str, name: str, got: tuple, want: tuple) -> str:
        msg = f"{where}: feature {name!r} has shape {list(got)}, expected {list(want)} (meta/info.json)"
        if self._n:
            msg += f"; frames 0..{self._n - 1} of this episode had {list(want)} (a shape cannot change)"
        return msg

    def add_frame(self, frame: dict[str, Any]) -> None:
        """Adds one frame to the current episode: every feature of the dataset plus "task" (a string).

        Numeric values are numpy arrays of exactly the declared shape and dtype; cameras are uint8
        (H, W, 3) (or (3, H, W)). Nothing is kept if the frame is rejected.
        """
        self._check_usable()
        where = f"episode {self._episodes}, frame {self._n}"
        if not isinstance(frame, dict):
            raise DatasetError(
                f"{where}: got {type(frame).__name__}, expected a dict of feature name to value"
            )
        expected = {*self._user, "task"}
        missing, unknown = sorted(expected - set(frame)), sorted(set(frame) - expected)
        if missing or unknown:
            auto = sorted(set(unknown) & set(DEFAULT_FEATURES))
            hint = f" ({auto} are filled by the writer)" if auto else ""
            raise DatasetError(f"{where}: missing features {missing}, unknown features {unknown}{hint}")
        task = frame["task"]
        if not isinstance(task, str) or not task:
            raise DatasetError(f"{where}: 'task' got {task!r}, expected a non-empty string")
        values = {k: self._value(k, ft, frame[k], where) for k, ft in self._user.items()}

        try:
            if self._n == 0:
                for key in self._video_keys:
                    h, w, _ = self._user[key]["shape"]
                    v = self._video
                    self._encoders[key] = VideoEncoder(
                        self._staging.tmp(f"{key}.mp4"),
                        fps=self.fps,
                        width=w,
                        height=h,
                        codec=self._encoder,
                        pix_fmt=v.pix_fmt,
                        g=v.g,
                        crf=self._crf,
                        preset=v.preset,
                    )
                for key in (*self._video_keys, *self._image_keys):
                    self._img_stats[key] = ImageStats()
            for key, v in values.items():
                dtype = self._user[key]["dtype"]
                if dtype == "video":
                    self._encoders[key].add(v)
                elif dtype == "image":
                    self._buf[key].append(encode_png(v))
                else:
                    self._buf[key].append(v.copy())  # the caller may reuse (and overwrite) its array
                if dtype in VISUAL_DTYPES:
                    self._img_stats[key].add(v)
        except BaseException as e:
            self._broken = f"add_frame failed: {e}"
            self._abort_encoders()
            raise
        self._task_buf.append(task)
        self._n += 1

    def _abort_encoders(self) -> None:
        for enc in self._encoders.values():
            enc.abort()
        self._encoders = {}

    def clear_episode(self) -> None:
        """Discards the frames of the current episode."""
        self._abort_encoders()
        self._reset_episode()

    def save_episode(self) -> int:
        """Commits the current episode (see the module docstring) and returns its episode_index."""
        self._check_usable()
        if self._n == 0:
            raise DatasetError(
                f"save_episode: episode {self._episodes} has no frames; call add_frame first (an episode of "
                "length 0 cannot be saved)"
            )
        try:
            return self._commit()
        except BaseException as e:
            self._broken = f"save_episode failed: {type(e).__name__}: {e}"
            self._abort_encoders()
            raise

    def _commit(self) -> int:
        e, n, fps = self._episodes, self._n, self.fps
        segments: dict[str, Path] = {}
        for key, enc in self._encoders.items():
            got = enc.close()
            if got != n:
                raise VideoError(f"{enc.path}: encoded {got} frames, the episode has {n}")
            segments[key] = enc.path
        self._encoders = {}
        _point("videos_encoded")

        # Frame rows and the episode's stats.
        new_tasks = [t for t in dict.fromkeys(self._task_buf) if t not in self._task_ids]
        task_ids = {**self._task_ids, **{t: len(self._tasks) + i for i, t in enumerate(new_tasks)}}
        cols: dict[str, np.ndarray | list] = {
            k: (np.stack(v) if self._user[k]["dtype"] != "image" else v) for k, v in self._buf.items()
        }
        cols["timestamp"] = (np.arange(n) / fps).astype(np.float32)
        cols["frame_index"] = np.arange(n, dtype=np.int64)
        cols["episode_index"] = np.full(n, e, dtype=np.int64)
        cols["index"] = np.arange(self._frames, self._frames + n, dtype=np.int64)
        cols["task_index"] = np.array([task_ids[t] for t in self._task_buf], dtype=np.int64)
        table = self._frame_table(cols)
        ep_stats: dict[str, dict[str, np.ndarray]] = {}
        for key, ft in self._info["features"].items():
            if ft["dtype"] in VISUAL_DTYPES:
                ep_stats[key] = self._img_stats[key].result()
            elif ft["dtype"] != "video":
                ep_stats[key] = vector_stats(cols[key])

        # Videos: each episode's MP4 becomes a file of its own in its camera's current group.
        video_cols: dict[str, Any] = {}
        for key, seg in segments.items():
            grp = self._groups[key]
            size = seg.stat().st_size
            if grp.episodes and grp.nbytes + size >= self._video_cap:
                self._close_group(key)
                grp = self._groups[key]
            lin = grp.first + len(grp.episodes)
            self._staging.place(seg, self._video_path(key, lin))
            c, f = chunk_file(lin, self._chunks)
            video_cols.update(
                {
                    f"videos/{key}/chunk_index": c,
                    f"videos/{key}/file_index": f,
                    f"videos/{key}/from_timestamp": 0.0,
                    f"videos/{key}/to_timestamp": n / fps,
                }
            )
            grp.episodes.append(e)
            grp.frames.append(n)
            grp.nbytes += size
        _point("videos_placed")

        # Data: rewrite this session's data file with the episode appended (or start a new file).
        data = self._data
        if data is not None and (
            data.table.num_rows + n > MAX_ROWS_PER_DATA_FILE
            or data.nbytes * (1 + n / max(1, data.table.num_rows)) >= self._data_cap
        ):
            data = None
        if data is None:
            data = _OpenData(linear=self._data_next, table=table, nbytes=0)
        else:
            data = _OpenData(data.linear, pa.concat_tables([data.table, table]).combine_chunks(), data.nbytes)
        data_path = self._data_path(data.linear)
        self._staging.write_parquet(data_path, data.table)
        data.nbytes = data_path.stat().st_size
        _point("data_written")

        if new_tasks:
            self._staging.write_parquet(self.root / TASKS_PATH, tasks_table([*self._tasks, *new_tasks]))
        _point("tasks_written")

        # Episodes metadata.
        meta_lin = self._meta_cur
        if meta_lin is None or self._meta_tables[meta_lin].num_rows >= MAX_EPISODES_PER_META_FILE:
            meta_lin = self._meta_next
        mc, mf = chunk_file(meta_lin, self._chunks)
        dc, df = chunk_file(data.linear, self._chunks)
        row: dict[str, Any] = {
            "episode_index": e,
            "tasks": list(dict.fromkeys(self._task_buf)),
            "length": n,
            "data/chunk_index": dc,
            "data/file_index": df,
            "dataset_from_index": self._frames,
            "dataset_to_index": self._frames + n,
            **video_cols,
            "meta/episodes/chunk_index": mc,
            "meta/episodes/file_index": mf,
        }
        for key, s in ep_stats.items():
            for stat, v in s.items():
                row[f"stats/{key}/{stat}"] = np.asarray(v).tolist()
        row_table = pa.Table.from_pylist([row], schema=self._ep_schema)
        old = self._meta_tables.get(meta_lin)
        meta_table = row_table if old is None else pa.concat_tables([old, row_table]).combine_chunks()
        self._staging.write_parquet(self._meta_path(meta_lin), meta_table)
        _point("episodes_written")

        self._stats.add(ep_stats)
        self._staging.write_json(self.root / STATS_PATH, stats_to_json(self._stats.result()))
        _point("stats_written")

        self._staging.sync()  # everything info.json will refer to is on disk before it is
        info = dict(self._info)
        info.update(
            total_episodes=e + 1,
            total_frames=self._frames + n,
            total_tasks=len(task_ids),
            splits={"train": f"0:{e + 1}"},
        )
        self._staging.write_json(self.root / INFO_PATH, info)
        self._staging.sync()
        _point("committed")

        # The commit happened: the in-memory state follows.
        self._info = info
        self._tasks = [*self._tasks, *new_tasks]
        self._task_ids = task_ids
        self._data, self._data_next = data, data.linear + 1
        self._meta_tables[meta_lin] = meta_table
        self._meta_cur, self._meta_next = meta_lin, max(self._meta_next, meta_lin + 1)
        self._ep_meta_file.append(meta_lin)
        self._episodes, self._frames = e + 1, self._frames + n
        self._reset_episode()
        return e

    def _frame_table(self, cols: dict[str, Any]) -> pa.Table:
        arrays = []
        for f in self._schema:
            v = cols[f.name]
            if pa.types.is_struct(f.type):  # image: PNG bytes
                arrays.append(pa.array([{"bytes": b, "path": None} for b in v], type=f.type))
            elif pa.types.is_fixed_size_list(f.type):
                flat = pa.array(np.ascontiguousarray(v).reshape(-1), type=f.type.value_type)
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, f.type.list_size))
            else:
                arrays.append(pa.array(np.asarray(v).reshape(-1), type=f.type))
        return pa.Table.from_arrays(arrays, schema=self._schema)

    # ------------------------------------------------------------------------------------------
    # Joining a camera's per-episode files into one

    def _close_group(self, key: str) -> None:
        """Joins the group's per-episode files into its file and starts the next group after it."""
        grp = self._groups[key]
        if len(grp.episodes) > 1:
            fps = self.fps
            parts = [
                (self._video_path(key, grp.first + i), 0.0, frames / fps)
                for i, frames in enumerate(grp.frames)
            ]
            tmp = self._staging.tmp(f"{key}.mp4")
            counts = concat_videos(parts, tmp)
            if counts != grp.frames:
                tmp.unlink(missing_ok=True)
                bad = [(e, c, f) for e, c, f in zip(grp.episodes, counts, grp.frames, strict=True) if c != f]
                raise VideoError(
                    f"joining {key!r} videos: (episode, frames found, frames expected) = {bad}; a video file "
                    "is shorter than its episode"
                )
            _point("group_joined")
            self._staging.place(tmp, self._video_path(key, grp.first))
            self._staging.sync()
            _point("group_placed")
            c, f = chunk_file(grp.first, self._chunks)
            updates: dict[int, dict[str, Any]] = {}
            start = 0
            for e, frames in zip(grp.episodes, grp.frames, strict=True):
                updates[e] = {
                    f"videos/{key}/chunk_index": c,
                    f"videos/{key}/file_index": f,
                    f"videos/{key}/from_timestamp": start / fps,
                    f"videos/{key}/to_timestamp": (start + frames) / fps,
                }
                start += frames
            self._update_episode_rows(updates)
            self._staging.sync()
            _point("group_committed")
            for i in range(1, len(grp.episodes)):
                self._video_path(key, grp.first + i).unlink(missing_ok=True)
            fsync_dir(self._video_path(key, grp.first).parent)
        self._groups[key] = _Group(first=grp.first + 1 if grp.episodes else grp.first)

    def _update_episode_rows(self, updates: dict[int, dict[str, Any]]) -> None:
        by_file: dict[int, list[int]] = {}
        for e in updates:
            by_file.setdefault(self._ep_meta_file[e], []).append(e)
        for lin, eps in sorted(by_file.items()):
            table = self._meta_tables[lin]
            ep_col = table.column("episode_index").to_pylist()
            pos = {ep: i for i, ep in enumerate(ep_col)}
            for col in next(iter(updates.values())):
                values = table.column(col).to_pylist()
                for ep in eps:
                    values[pos[ep]] = updates[ep][col]
                i = table.schema.get_field_index(col)
                table = table.set_column(
                    i, table.schema.field(i), pa.array(values, type=table.schema.field(i).type)
                )
            self._staging.write_parquet(self._meta_path(lin), table)
            self._meta_tables[lin] = table

    # ------------------------------------------------------------------------------------------
    # Closing

    def finalize(self) -> None:
        """Joins the last per-episode video files and releases the dataset. Idempotent.

        The dataset is complete without it (every saved episode is committed); finalize only packs the
        videos. Frames added since the last save_episode must be saved or cleared first.
        """
        if self._closed:
            return
        self._check_usable()
        if self._n:
            raise DatasetError(
                f"finalize: episode {self._episodes} has {self._n} unsaved frames; call save_episode() or "
                "clear_episode() first"
            )
        try:
            for key in self._video_keys:
                self._close_group(key)
        except BaseException as e:
            self._broken = f"finalize failed: {e}"
            raise
        self._release()
        with contextlib.suppress(OSError):
            self._staging.dir.rmdir()

    def _release(self) -> None:
        self._closed = True
        self._staging.clear(keep=())
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None
            with contextlib.suppress(OSError):
                (self._staging.dir / _LOCK_NAME).unlink()

    def close(self) -> None:
        """Stops without joining videos (the dataset stays valid); discards unsaved frames."""
        if not self._closed:
            self.clear_episode()
            self._release()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._broken:
            self.finalize()
        else:
            self.close()


__all__ = ["DEFAULT_VIDEO_CODEC", "DatasetWriter", "VideoSettings"]
