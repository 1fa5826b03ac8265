"""Resolve "a local folder or a Hugging Face Hub repo id" to a local folder.

Local folders always win. A repo id goes through `huggingface_hub.snapshot_download`; when that fails (no
network, HF_HUB_OFFLINE=1) the files are looked up in the local HF cache instead, so a checkpoint that was
downloaded once keeps working offline. Every failure says where it looked and what to do about it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from smolvla.errors import SmolVLAError

# "owner/name": one slash, Hub-legal characters, no leading dot or dash (so "./x" and "../x" are paths).
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_TRUE = {"1", "ON", "YES", "TRUE"}


ADAPTER_CONFIG = "adapter_config.json"  # PEFT's: a LoRA adapter's settings and its base checkpoint


class HubError(SmolVLAError, FileNotFoundError):
    """A checkpoint, tokenizer or file could be found neither locally nor on (or cached from) the Hub."""


def looks_like_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and ".." not in name


def hf_cache_dir() -> Path:
    """The HF hub cache, from the environment as it is now.

    huggingface_hub reads these variables once at import time; reading them again per call means a
    changed environment (tests, notebooks, a CLI flag that sets HF_HOME) is honoured.
    """
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def hub_offline() -> bool:
    return any(os.environ.get(v, "").upper() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _short(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def resolve_dir(
    name_or_path: str | Path,
    *,
    relative_to: Path | None = None,
    allow_patterns: list[str] | None = None,
    what: str = "checkpoint",
    repo_type: str = "model",
) -> Path:
    """A local folder for `name_or_path`: `relative_to/name`, else `name`, else a Hub snapshot (or cache).

    `repo_type` is "model" (checkpoints, backbones) or "dataset"."""
    name = str(name_or_path)
    tried: list[Path] = []
    if relative_to is not None:
        tried.append(Path(relative_to) / Path(name).expanduser())
    tried.append(Path(name).expanduser())
    for p in tried:
        if p.is_dir():
            return p
    looked = ", ".join(str(p) for p in dict.fromkeys(tried))
    if not looks_like_repo_id(name):
        raise HubError(
            f"{what} {name!r} not found: no folder at {looked}, and it is not a Hub repo id ('owner/name'). "
            "Pass an existing folder."
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise HubError(
            f"{what} {name!r} not found: no folder at {looked}, and huggingface_hub is not installed to "
            f"fetch the Hub repo {name!r}. Run `pip install huggingface_hub` or pass a local folder."
        ) from None

    cache = hf_cache_dir()
    offline = hub_offline()
    problems: list[str] = []
    common = {"repo_type": repo_type, "allow_patterns": allow_patterns, "cache_dir": cache}
    if not offline:
        try:
            endpoint = os.environ.get("HF_ENDPOINT") or None
            return Path(snapshot_download(name, endpoint=endpoint, **common))
        except Exception as e:  # network down, repo missing, gated...: the cache may still have it
            problems.append(f"download failed ({_short(e)})")
    try:
        return Path(snapshot_download(name, local_files_only=True, **common))
    except Exception as e:
        problems.append(f"not in the local cache ({_short(e)})")
    mode = "offline mode (HF_HUB_OFFLINE=1)" if offline else "online"
    fetch = f"hf download {name}" + (" --repo-type dataset" if repo_type == "dataset" else "")
    raise HubError(
        f"{what} {name!r} not found. Looked for a local folder at {looked}; looked for Hub repo {name!r} "
        f"({mode}) in the HF cache {cache}: {'; '.join(problems)}. Pass an existing local folder, or fetch "
        f"the repo once while online (`{fetch}`), or point HF_HUB_CACHE / HF_HOME at the cache that holds it."
    )


def resolve_file(
    name_or_path: str | Path,
    filename: str,
    *,
    relative_to: Path | None = None,
    what: str = "checkpoint",
) -> Path:
    """The path of `filename` inside the folder `resolve_dir` finds for `name_or_path`."""
    folder = resolve_dir(name_or_path, relative_to=relative_to, allow_patterns=[filename], what=what)
    path = folder / filename
    if path.is_file():
        return path
    where = str(folder)
    local = [Path(relative_to) / str(name_or_path)] if relative_to is not None else []
    if not any(folder == q for q in [*local, Path(str(name_or_path)).expanduser()]):
        where += f" (the snapshot of Hub repo {str(name_or_path)!r} in the HF cache {hf_cache_dir()})"
    raise HubError(f"{filename} not found: looked in {where}")


def adapter_base(folder: Path) -> Path | None:
    """The base checkpoint folder of the adapter in `folder` (None if `folder` holds no adapter).
    LeRobot saves no backbone or tokenizer files beside an adapter: names relative to a checkpoint
    resolve against its base."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise HubError(f"{path}: not readable JSON ({e})") from None
    base = d.get("base_model_name_or_path") if isinstance(d, dict) else None
    if not isinstance(base, str) or not base:
        raise HubError(
            f"{path}: base_model_name_or_path is {base!r}; an adapter needs the checkpoint it was trained "
            "on (a folder or a hub repo id)"
        )
    return resolve_dir(
        base, allow_patterns=["*.json", "*.safetensors", "vlm/*"], what="the adapter's base checkpoint"
    )
