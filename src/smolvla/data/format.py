"""The LeRobot dataset layout on disk (codebase v3.0, and the v2.x layout for reading), and atomic writes.

v3.0, as LeRobot 0.6.1 writes and reads it:

    meta/info.json                                   schema, fps, totals, path templates
    meta/stats.json                                  aggregated stats per feature
    meta/tasks.parquet                               column task_index, pandas index named "task"
    meta/episodes/chunk-{c:03d}/file-{f:03d}.parquet one row per episode (file bounds, stats/...)
    data/chunk-{c:03d}/file-{f:03d}.parquet          frame rows of many episodes, in `index` order
    videos/{key}/chunk-{c:03d}/file-{f:03d}.mp4      many episodes per file, back to back

LeRobot loads every parquet file under `data/` and `meta/episodes/` by globbing, and addresses frames by
their row position, so those folders must hold exactly the committed rows (plus, at most, rows past the
end that nothing refers to). Temporary files therefore live in `.staging/` at the dataset root.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from smolvla.data.errors import DatasetError

CODEBASE_VERSION = "v3.0"
READABLE_VERSIONS = ("v2.0", "v2.1", "v3.0")

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
STAGING_DIR = ".staging"

# LeRobot's defaults (info.json fields).
CHUNKS_SIZE = 1000  # files per chunk folder
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200

# Columns LeRobot adds to every frame; the writer fills them, a frame given to add_frame must not.
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
VISUAL_DTYPES = ("video", "image")
NUMERIC_DTYPES = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
)


def chunk_file(linear: int, chunks_size: int) -> tuple[int, int]:
    """(chunk_index, file_index) of the `linear`-th file of a folder: chunks of `chunks_size` files."""
    return divmod(linear, chunks_size)


def linear_index(chunk_index: int, file_index: int, chunks_size: int) -> int:
    return chunk_index * chunks_size + file_index


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{what}: {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{what}: {path} is not valid JSON ({e})") from e


def read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DatasetError(f"{what}: {path} is missing") from None
    out = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{what}: {path} line {n} is not valid JSON ({e})") from e
    return out


# --------------------------------------------------------------------------------------------------
# Parquet schemas


def arrow_type(name: str, ft: dict[str, Any]) -> pa.DataType:
    """The parquet column type of a non-video feature, as LeRobot (through HF datasets) writes it."""
    dtype, shape = ft["dtype"], tuple(ft["shape"])
    if dtype == "image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    if dtype == "string":
        return pa.string()
    if dtype not in NUMERIC_DTYPES:
        raise DatasetError(f"feature {name!r}: dtype {dtype!r} cannot be stored in parquet")
    base = pa.from_numpy_dtype(np.dtype(dtype))
    if shape == (1,):
        return base
    if len(shape) == 1:
        return pa.list_(base, shape[0])
    raise DatasetError(f"feature {name!r}: shape {list(shape)} is not supported (expected (1,) or (D,))")


def _hf_feature(name: str, ft: dict[str, Any]) -> dict[str, Any]:
    dtype, shape = ft["dtype"], tuple(ft["shape"])
    if dtype == "image":
        return {"_type": "Image"}
    if dtype == "string" or shape == (1,):
        return {"dtype": dtype, "_type": "Value"}
    return {"feature": {"dtype": dtype, "_type": "Value"}, "length": shape[0], "_type": "List"}


def data_features(features: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The features stored in the frame parquet files: all but videos."""
    return {k: v for k, v in features.items() if v["dtype"] != "video"}


def data_schema(features: dict[str, dict[str, Any]]) -> pa.Schema:
    """Schema of the frame parquet files, with the HF `datasets` feature description as metadata."""
    cols = data_features(features)
    hf = {"info": {"features": {k: _hf_feature(k, ft) for k, ft in cols.items()}}}
    return pa.schema(
        [pa.field(k, arrow_type(k, ft)) for k, ft in cols.items()],
        metadata={"huggingface": json.dumps(hf)},
    )


def episodes_schema(features: dict[str, dict[str, Any]], stat_names: tuple[str, ...]) -> pa.Schema:
    """Schema of `meta/episodes/*.parquet`, in LeRobot's column order."""
    fields = [
        pa.field("episode_index", pa.int64()),
        pa.field("tasks", pa.list_(pa.string())),
        pa.field("length", pa.int64()),
        pa.field("data/chunk_index", pa.int64()),
        pa.field("data/file_index", pa.int64()),
        pa.field("dataset_from_index", pa.int64()),
        pa.field("dataset_to_index", pa.int64()),
    ]
    for key, ft in features.items():
        if ft["dtype"] == "video":
            fields += [
                pa.field(f"videos/{key}/chunk_index", pa.int64()),
                pa.field(f"videos/{key}/file_index", pa.int64()),
                pa.field(f"videos/{key}/from_timestamp", pa.float64()),
                pa.field(f"videos/{key}/to_timestamp", pa.float64()),
            ]
    for key, ft in features.items():
        if ft["dtype"] == "string":
            continue
        visual = ft["dtype"] in VISUAL_DTYPES
        for stat in stat_names:
            if stat == "count":
                t: pa.DataType = pa.list_(pa.int64())
            elif visual:  # (3, 1, 1)
                t = pa.list_(pa.list_(pa.list_(pa.float64())))
            else:
                t = pa.list_(pa.float64())
            fields.append(pa.field(f"stats/{key}/{stat}", t))
    fields += [
        pa.field("meta/episodes/chunk_index", pa.int64()),
        pa.field("meta/episodes/file_index", pa.int64()),
    ]
    return pa.schema(fields)


def tasks_table(tasks: list[str]) -> pa.Table:
    """`meta/tasks.parquet`: what pandas writes for a frame with column task_index and index "task"."""
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    schema = pa.schema(
        [pa.field("task_index", pa.int64()), pa.field("task", pa.string())],
        metadata={"pandas": json.dumps(pandas_meta)},
    )
    return pa.table({"task_index": np.arange(len(tasks), dtype=np.int64), "task": tasks}, schema=schema)


def read_tasks_parquet(path: Path) -> list[str]:
    """Tasks ordered by task_index (which must be 0..n-1)."""
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise DatasetError(f"tasks: {path} is missing") from None
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"tasks: {path} is not a readable parquet file ({e})") from e
    names = table.column_names
    text_col = "task" if "task" in names else "__index_level_0__" if "__index_level_0__" in names else None
    if "task_index" not in names or text_col is None:
        raise DatasetError(f"tasks: {path} has columns {names}, expected 'task_index' and 'task'")
    idx = table.column("task_index").to_pylist()
    text = table.column(text_col).to_pylist()
    order = sorted(range(len(idx)), key=lambda i: idx[i])
    if [idx[i] for i in order] != list(range(len(idx))):
        raise DatasetError(f"tasks: {path} has task_index values {sorted(idx)}, expected 0..{len(idx) - 1}")
    return [text[i] for i in order]


# --------------------------------------------------------------------------------------------------
# Atomic writes: write a temporary file in .staging/, fsync it, rename it over the target, fsync the
# folder. A reader (or a killed writer) sees either the old file or the new one, never a partial file.


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms that cannot open folders (Windows) have no folder fsync either
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Staging:
    """Temporary files beside the dataset (same filesystem, so renames are atomic).

    `place` syncs a file's bytes before renaming it; the renames themselves reach the disk when `sync`
    fsyncs the folders they touched. Callers sync before a commit point (so nothing it refers to can be
    lost to a power cut while it survives) and after it.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.dir = self.root / STAGING_DIR
        self._n = 0
        self._dirty: set[Path] = set()

    def sync(self) -> None:
        for d in sorted(self._dirty, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(d)
        self._dirty.clear()

    def tmp(self, name: str) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._n += 1
        return self.dir / f"{self._n:06d}-{os.getpid()}-{Path(name).name}"

    def place(self, tmp: Path, dst: Path) -> None:
        """Moves a finished temporary file over `dst` atomically (after syncing its bytes)."""
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        new_dirs = [p for p in [dst.parent, *dst.parent.parents] if not p.exists()]
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dst)
        self._dirty.add(dst.parent)
        self._dirty.update(d.parent for d in new_dirs)

    def write_bytes(self, dst: Path, data: bytes) -> None:
        tmp = self.tmp(dst.name)
        tmp.write_bytes(data)
        self.place(tmp, dst)

    def write_json(self, dst: Path, obj: Any) -> None:
        self.write_bytes(dst, (json.dumps(obj, indent=4) + "\n").encode())

    def write_parquet(self, dst: Path, table: pa.Table) -> None:
        tmp = self.tmp(dst.name)
        pq.write_table(table, tmp, compression="snappy", use_dictionary=True)
        self.place(tmp, dst)

    def clear(self, keep: tuple[str, ...] = ()) -> None:
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                if p.name not in keep and p.is_file():
                    p.unlink()
