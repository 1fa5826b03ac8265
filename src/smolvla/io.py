"""Small file helpers used everywhere: JSON read with clear errors, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from smolvla.errors import MissingFileError


def read_json_object(path: str | Path, error: type[Exception] = ValueError) -> dict[str, Any]:
    """The JSON object in `path`. A missing file raises FileNotFoundError, bad JSON or a non-object
    raises `error`; both name the path."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from e
    if not isinstance(d, dict):
        raise error(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Writes via a temporary file, fsync and rename: readers see the old file or the new one, never a
    truncated one, even if the process is killed mid-write."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    """JSON with a trailing newline, written atomically."""
    write_atomic(path, json.dumps(obj, indent=indent) + "\n")
