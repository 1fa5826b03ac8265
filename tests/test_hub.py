"""hub.resolve_dir / resolve_file: local folders, relative folders, and an offline HF cache built by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from smolvla.hub import HubError, hf_cache_dir, looks_like_repo_id, resolve_dir, resolve_file

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_cache(cache: Path, repo: str = "owner/name", files: dict[str, str] | None = None) -> Path:
    """The layout huggingface_hub writes: refs/main -> commit, snapshots/<commit>/<file>, blobs/."""
    owner, name = repo.split("/")
    root = cache / f"models--{owner}--{name}"
    (root / "refs").mkdir(parents=True)
    (root / "blobs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for fname, text in (files or {"tokenizer.json": "{}"}).items():
        (snap / fname).parent.mkdir(parents=True, exist_ok=True)
        (snap / fname).write_text(text)
    return snap


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_local_folder(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    assert resolve_dir(tmp_path / "ckpt") == tmp_path / "ckpt"
    assert resolve_dir(str(tmp_path / "ckpt")) == tmp_path / "ckpt"


def test_relative_folder_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "ckpt"
    (base / "tokenizer").mkdir(parents=True)
    (tmp_path / "tokenizer").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_dir("tokenizer", relative_to=base) == base / "tokenizer"
    assert resolve_dir("tokenizer") == Path("tokenizer")


def test_missing_path_that_is_no_repo_id(tmp_path: Path) -> None:
    with pytest.raises(HubError) as e:
        resolve_dir(tmp_path / "nope" / "deeper" / "x", what="checkpoint")
    assert isinstance(e.value, FileNotFoundError)
    assert str(tmp_path / "nope") in str(e.value) and "not a Hub repo id" in str(e.value)


def test_repo_id_shape() -> None:
    assert looks_like_repo_id("lerobot/smolvla_base")
    assert looks_like_repo_id("HuggingFaceTB/SmolVLM2-500M-Video-Instruct")
    for bad in ("./x", "../x", "a/b/c", "/abs/path", "x", "a/..", ""):
        assert not looks_like_repo_id(bad), bad


def test_offline_cache(offline_cache: Path) -> None:
    snap = make_cache(offline_cache, files={"tokenizer.json": "{}", "sub/config.json": "{}"})
    assert resolve_dir("owner/name") == snap
    assert resolve_file("owner/name", "tokenizer.json") == snap / "tokenizer.json"
    assert resolve_file("owner/name", "sub/config.json") == snap / "sub" / "config.json"


def test_offline_cache_from_hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hf_cache_dir() == tmp_path / "home" / "hub"
    snap = make_cache(tmp_path / "home" / "hub")
    assert resolve_dir("owner/name") == snap


def test_local_folder_wins_over_cache(offline_cache: Path, tmp_path: Path) -> None:
    make_cache(offline_cache)
    local = tmp_path / "owner" / "name"
    local.mkdir(parents=True)
    assert resolve_dir("owner/name", relative_to=tmp_path) == local


def test_missing_file_in_snapshot(offline_cache: Path) -> None:
    snap = make_cache(offline_cache)
    with pytest.raises(HubError) as e:
        resolve_file("owner/name", "tokenizer_config.json", what="tokenizer")
    msg = str(e.value)
    assert msg.startswith("tokenizer_config.json not found: looked in") and str(snap) in msg


def test_missing_file_in_local_folder(tmp_path: Path) -> None:
    with pytest.raises(HubError, match=r"tokenizer.json not found: looked in .*"):
        resolve_file(tmp_path, "tokenizer.json")


def test_missing_repo_offline(offline_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(HubError) as e:
        resolve_dir("owner/missing", relative_to=tmp_path / "ckpt", what="tokenizer")
    msg = str(e.value)
    for part in (
        "tokenizer 'owner/missing' not found",
        str(tmp_path / "ckpt" / "owner" / "missing"),
        str(offline_cache),
        "HF_HUB_OFFLINE=1",
        "hf download owner/missing",
    ):
        assert part in msg, part


def test_network_failure_falls_back_to_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: connection refused
    snap = make_cache(cache)
    assert resolve_dir("owner/name") == snap
    with pytest.raises(HubError, match="download failed"):
        resolve_dir("owner/missing")


def test_without_huggingface_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import now raises ImportError
    with pytest.raises(HubError, match="pip install huggingface_hub"):
        resolve_dir("owner/name")
