"""LeRobotDataset / MultiLeRobotDataset: action chunks and padding, windows, episode selection,
rename_map, concat, the v2.1 layout, DataLoader workers, and every bad input refused at open time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from smolvla.data import (
    DatasetError,
    LeRobotDataset,
    MultiLeRobotDataset,
    VideoError,
    concat,
    encode_video,
    vector_stats,
)
from smolvla.data.stats import stats_to_json
from tests.data import synth

LENGTHS = [5, 3, 4]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ds") / "ds"
    synth.write(path, LENGTHS)
    return path


def frames_of(e: int) -> list[dict]:
    return synth.episode(e, LENGTHS[e], synth.features())


def copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


def test_action_chunk_is_padded_at_the_end_of_the_episode(root: Path) -> None:
    ds = LeRobotDataset(root, chunk_size=4)
    actions = np.stack([f["action"] for f in frames_of(0)])
    item = ds[1]  # episode 0, frame 1: frames 1..4 all inside
    np.testing.assert_array_equal(item["action"].numpy(), actions[1:5])
    assert item["action_is_pad"].tolist() == [False] * 4
    item = ds[3]  # frame 3 of 5: frames 3, 4, then the last action repeated
    np.testing.assert_array_equal(item["action"].numpy(), actions[[3, 4, 4, 4]])
    assert item["action_is_pad"].tolist() == [False, False, True, True]
    assert item["action"].shape == (4, synth.ACTION_DIM) and item["action_is_pad"].dtype == torch.bool
    item = ds[5]  # the first frame of episode 1 never reaches into episode 0 or 2
    np.testing.assert_array_equal(
        item["action"].numpy(), np.stack([f["action"] for f in frames_of(1)])[[0, 1, 2, 2]]
    )
    assert item["observation.state"].shape == (synth.STATE_DIM,)


def test_windows_into_the_past_for_state_and_camera(root: Path) -> None:
    ds = LeRobotDataset(
        root, delta_timestamps={"observation.state": [-0.1, 0.0], "observation.images.top": [-0.2, 0.0]}
    )
    item = ds[6]  # episode 1, frame 1
    states = np.stack([f["observation.state"] for f in frames_of(1)])
    np.testing.assert_array_equal(item["observation.state"].numpy(), states[[0, 1]])
    assert item["observation.state_is_pad"].tolist() == [False, False]
    assert item["observation.images.top"].shape == (2, 3, 16, 16)
    assert item["observation.images.top_is_pad"].tolist() == [True, False]
    # The padded frame is the episode's first frame (clamped), not a frame of episode 0.
    first = (item["observation.images.top"][0].permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(first - frames_of(1)[0]["observation.images.top"]).mean() < 4


def test_bad_delta_timestamps(root: Path) -> None:
    with pytest.raises(DatasetError, match=r"\[0.05\] are not multiples of 1/fps"):
        LeRobotDataset(root, delta_timestamps={"action": [0.0, 0.05]})
    with pytest.raises(DatasetError, match="'gripper' is not a feature"):
        LeRobotDataset(root, delta_timestamps={"gripper": [0.0]})
    with pytest.raises(DatasetError, match="both set the action chunk"):
        LeRobotDataset(root, chunk_size=2, delta_timestamps={"action": [0.0]})
    with pytest.raises(DatasetError, match="chunk_size"):
        LeRobotDataset(root, chunk_size=0)


def test_episode_selection(root: Path) -> None:
    ds = LeRobotDataset(root, episodes=[2, 1])
    assert (ds.episodes, len(ds), ds.num_episodes) == ([1, 2], 7, 2)
    assert [int(ds[i]["episode_index"]) for i in range(7)] == [1, 1, 1, 2, 2, 2, 2]
    assert int(ds[3]["index"]) == 8  # the global frame index is kept
    np.testing.assert_array_equal(ds[3]["observation.state"].numpy(), frames_of(2)[0]["observation.state"])
    assert ds.episode_bounds(1) == (3, 7)
    with pytest.raises(DatasetError, match=r"episodes: \[3, 7\] are not in"):
        LeRobotDataset(root, episodes=[0, 3, 7])
    with pytest.raises(IndexError):
        ds[7]


def test_rename_map(root: Path) -> None:
    rename = {"observation.images.top": "observation.images.camera1", "action": "act"}
    ds = LeRobotDataset(
        root, rename_map=rename, chunk_size=2, delta_timestamps={"observation.images.camera1": [0.0]}
    )
    item = ds[0]
    assert "observation.images.camera1" in item and "observation.images.top" not in item
    assert {"act", "act_is_pad", "observation.images.camera1_is_pad"} <= set(item)
    assert item["observation.images.camera1"].shape == (3, 16, 16)
    assert "act" in ds.features and "act" in ds.stats and ds.camera_keys == ["observation.images.camera1"]
    with pytest.raises(DatasetError, match=r"rename_map: keys \['nope'\]"):
        LeRobotDataset(root, rename_map={"nope": "x"})
    with pytest.raises(DatasetError, match="several features would be named"):
        LeRobotDataset(root, rename_map={"action": "observation.state"})


def test_image_transforms_apply_to_cameras(root: Path) -> None:
    ds = LeRobotDataset(root, image_transforms=lambda img: img * 0)
    item = ds[0]
    assert item["observation.images.top"].abs().sum() == 0 and item["observation.state"].abs().sum() > 0


def test_concat(root: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    synth.write(other, [2, 2], synth.features(cams=("front",)))
    with pytest.raises(
        DatasetError,
        match=r"lacks \['observation.images.top'\], has in addition \['observation.images.front'\]",
    ):
        concat([root, other])
    mixed = concat(
        [
            LeRobotDataset(root, chunk_size=3),
            LeRobotDataset(
                other, chunk_size=3, rename_map={"observation.images.front": "observation.images.top"}
            ),
        ]
    )
    assert isinstance(mixed, MultiLeRobotDataset)
    assert (len(mixed), mixed.num_episodes) == (16, 5)
    assert int(mixed[11]["dataset_index"]) == 0 and int(mixed[12]["dataset_index"]) == 1
    assert int(mixed[-1]["episode_index"]) == 1 and mixed[-1]["action"].shape == (3, synth.ACTION_DIM)
    assert int(mixed.stats["action"]["count"][0]) == 16
    small = tmp_path / "small"
    synth.write(small, [2], synth.features(size=8))
    with pytest.raises(
        DatasetError,
        match=r"observation.images.top: \('camera', \(16, 16, 3\)\) vs \('camera', \(8, 8, 3\)\)",
    ):
        concat([root, small])


def test_dataloader_with_workers(root: Path) -> None:
    ds = LeRobotDataset(root, chunk_size=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == len(ds)
    b = batches[1]
    assert b["observation.images.top"].shape == (4, 3, 16, 16) and b["action"].shape == (
        4,
        2,
        synth.ACTION_DIM,
    )
    torch.testing.assert_close(b["observation.images.top"][0], ds[4]["observation.images.top"])
    assert b["task"] == [ds[i]["task"] for i in range(4, 8)]


def _write_v21(root: Path, lengths: list[int]) -> list[list[dict]]:
    """A LeRobot v2.1 dataset, laid out by hand: per-episode parquet and mp4, jsonl metadata."""
    feats = synth.features()
    info = {
        "codebase_version": "v2.1",
        "robot_type": None,
        "total_episodes": len(lengths),
        "total_frames": sum(lengths),
        "total_tasks": 2,
        "total_videos": len(lengths),
        "total_chunks": 1,
        "chunks_size": 1000,
        "fps": synth.FPS,
        "splits": {"train": f"0:{len(lengths)}"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": {
            **feats,
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        },
    }
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text(
        '{"task_index": 0, "task": "task 0"}\n{"task_index": 1, "task": "task 1"}\n'
    )
    eps, stats, written, start = [], [], [], 0
    for e, n in enumerate(lengths):
        frames = synth.episode(e, n, feats)
        written.append(frames)
        state = np.stack([f["observation.state"] for f in frames])
        action = np.stack([f["action"] for f in frames])
        table = pa.table(
            {
                "observation.state": pa.array(state.tolist(), pa.list_(pa.float32())),
                "action": pa.array(action.tolist(), pa.list_(pa.float32())),
                "timestamp": pa.array(np.arange(n, dtype=np.float32) / synth.FPS),
                "frame_index": pa.array(np.arange(n)),
                "episode_index": pa.array(np.full(n, e)),
                "index": pa.array(np.arange(start, start + n)),
                "task_index": pa.array(np.full(n, e % 2)),
            }
        )
        (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / f"data/chunk-000/episode_{e:06d}.parquet")
        video = root / f"videos/chunk-000/observation.images.top/episode_{e:06d}.mp4"
        video.parent.mkdir(parents=True, exist_ok=True)
        encode_video(np.stack([f["observation.images.top"] for f in frames]), video, synth.FPS, codec="h264")
        eps.append(json.dumps({"episode_index": e, "tasks": [f"task {e % 2}"], "length": n}))
        stats.append(
            json.dumps({"episode_index": e, "stats": stats_to_json({"action": vector_stats(action)})})
        )
        start += n
    (root / "meta/episodes.jsonl").write_text("\n".join(eps) + "\n")
    (root / "meta/episodes_stats.jsonl").write_text("\n".join(stats) + "\n")
    return written


def test_reads_v21(tmp_path: Path) -> None:
    written = _write_v21(tmp_path / "v21", [3, 4])
    ds = LeRobotDataset(tmp_path / "v21", chunk_size=2)
    assert (ds.meta.version, len(ds), ds.num_episodes) == ("v2.1", 7, 2)
    item = ds[4]
    np.testing.assert_array_equal(item["observation.state"].numpy(), written[1][1]["observation.state"])
    np.testing.assert_array_equal(item["action"][0].numpy(), written[1][1]["action"])
    img = (item["observation.images.top"].permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(img - written[1][1]["observation.images.top"]).mean() < 4
    assert item["task"] == "task 1" and int(item["index"]) == 4
    actions = np.concatenate([[f["action"] for f in ep] for ep in written])
    np.testing.assert_allclose(ds.stats["action"]["mean"], actions.astype(np.float64).mean(0))


# ------------------------------------------------------------------------------------------------
# Bad input: each refused when the dataset is opened, with the file and what is wrong.


def test_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such folder"):
        LeRobotDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a LeRobot dataset folder"):
        LeRobotDataset(tmp_path / "empty")


def _edit_info(root: Path, **changes) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    info.update(changes)
    (root / "meta/info.json").write_text(json.dumps(info))


def test_unknown_version_and_bad_info(root: Path, tmp_path: Path) -> None:
    ds = copy(root, tmp_path)
    _edit_info(ds, codebase_version="v4.0")
    with pytest.raises(DatasetError, match=r"codebase_version 'v4.0'"):
        LeRobotDataset(ds)
    _edit_info(ds, codebase_version="v3.0", fps=-1)
    with pytest.raises(DatasetError, match="fps is -1"):
        LeRobotDataset(ds)
    (ds / "meta/info.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        LeRobotDataset(ds)


@pytest.mark.parametrize(
    ("missing", "match"),
    [("meta/tasks.parquet", "tasks.parquet is missing"), ("meta/episodes", "no episodes metadata")],
)
def test_missing_meta_files(root: Path, tmp_path: Path, missing: str, match: str) -> None:
    ds = copy(root, tmp_path)
    target = ds / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DatasetError, match=match):
        LeRobotDataset(ds)


def _rewrite(path: Path, fn) -> None:
    table = pq.read_table(path)
    pq.write_table(fn(table), path)


def test_parquet_columns_disagree_with_info(root: Path, tmp_path: Path) -> None:
    ds = copy(root, tmp_path)
    data = ds / "data/chunk-000/file-000.parquet"
    _rewrite(data, lambda t: t.append_column("reward", pa.array(np.zeros(t.num_rows, np.float32))))
    with pytest.raises(
        DatasetError, match=r"file-000.parquet: columns disagree .* missing \[\], unknown \['reward'\]"
    ):
        LeRobotDataset(ds)
    _rewrite(data, lambda t: t.drop_columns(["reward", "action"]))
    with pytest.raises(DatasetError, match=r"missing \['action'\]"):
        LeRobotDataset(ds)


def test_column_type_disagrees_with_info(root: Path, tmp_path: Path) -> None:
    ds = copy(root, tmp_path)
    data = ds / "data/chunk-000/file-000.parquet"
    _rewrite(
        data,
        lambda t: t.set_column(
            t.schema.get_field_index("action"),
            "action",
            pa.array(t.column("action").to_pylist(), pa.list_(pa.float64())),
        ),
    )
    with pytest.raises(DatasetError, match=r"column 'action' has dtype float64, info.json declares float32"):
        LeRobotDataset(ds)


def test_nan_in_state_or_action(root: Path, tmp_path: Path) -> None:
    ds = copy(root, tmp_path)
    data = ds / "data/chunk-000/file-000.parquet"

    def poison(t: pa.Table) -> pa.Table:
        state = np.stack(t.column("observation.state").to_numpy(zero_copy_only=False))
        state[6, 2] = np.nan  # episode 1, frame 1
        arr = pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), synth.STATE_DIM)
        return t.set_column(t.schema.get_field_index("observation.state"), "observation.state", arr)

    _rewrite(data, poison)
    with pytest.raises(DatasetError, match=r"'observation.state' holds NaN .* episode 1, frame 1"):
        LeRobotDataset(ds)
    assert LeRobotDataset(ds, episodes=[0, 2]).num_episodes == 2  # other episodes still open


def test_episode_of_length_zero(root: Path, tmp_path: Path) -> None:
    ds = copy(root, tmp_path)
    path = ds / "meta/episodes/chunk-000/file-000.parquet"

    def empty_first(t: pa.Table) -> pa.Table:
        lengths = t.column("length").to_pylist()
        lengths[1] = 0
        return t.set_column(t.schema.get_field_index("length"), "length", pa.array(lengths))

    _rewrite(path, empty_first)
    with pytest.raises(DatasetError, match="episode 1 has length 0"):
        LeRobotDataset(ds)


def test_rows_disagree_with_episode_metadata(root: Path, tmp_path: Path) -> None:
    ds = copy(root, tmp_path)
    data = ds / "data/chunk-000/file-000.parquet"
    _rewrite(data, lambda t: t.filter(pa.array(np.arange(t.num_rows) != 6)))
    with pytest.raises(DatasetError, match="episode 1 has 2 rows"):
        LeRobotDataset(ds)


def test_video_shorter_than_its_episode(root: Path, tmp_path: Path) -> None:
    ds = copy(root, tmp_path)
    video = next((ds / "videos").rglob("*.mp4"))
    frames = np.stack([synth.frame(0, i, 16, 16) for i in range(9)])  # the file holds 12 frames
    encode_video(frames, video, synth.FPS, codec="h264")
    with pytest.raises(VideoError, match=r"holds 0.9000 s of video \(9 frames\), but episode 2 .* shorter"):
        LeRobotDataset(ds)
    video.unlink()
    with pytest.raises(DatasetError, match=r"video file of episode .* is missing"):
        LeRobotDataset(ds)


def test_episodes_metadata_disagrees_with_info(root: Path, tmp_path: Path) -> None:
    ds = copy(root, tmp_path)
    _edit_info(ds, total_episodes=5)
    with pytest.raises(DatasetError, match="total_episodes=5 but meta/episodes holds episodes"):
        LeRobotDataset(ds)


def test_repo_ids(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from smolvla import hub

    home = tmp_path / "lerobot-home"
    shutil.copytree(root, home / "owner" / "name")
    monkeypatch.setenv("HF_LEROBOT_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert LeRobotDataset("owner/name").num_episodes == 3  # where LeRobot keeps datasets it recorded

    calls = []

    def with_repo_type(name, *, relative_to=None, allow_patterns=None, what="checkpoint", repo_type="model"):
        calls.append((name, what, repo_type))
        return home / "owner" / "name"

    monkeypatch.setattr(hub, "resolve_dir", with_repo_type)
    assert LeRobotDataset("other/repo").num_episodes == 3
    assert calls == [("other/repo", "dataset", "dataset")]  # a dataset snapshot, never a model's


def test_stats_rebuilt_from_episodes_when_stats_json_is_missing(root: Path, tmp_path: Path) -> None:
    ds = copy(root, tmp_path)
    (ds / "meta/stats.json").unlink()
    rebuilt, original = LeRobotDataset(ds).stats, LeRobotDataset(root).stats
    assert set(rebuilt) == set(original)
    for f in original:
        for k in original[f]:
            np.testing.assert_allclose(rebuilt[f][k], original[f][k])


def test_hub_dataset_from_the_offline_hf_cache(tmp_path, monkeypatch):
    """A repo id resolves to the HF cache's dataset snapshot (repo_type dataset) with HF_HUB_OFFLINE=1."""
    src = tmp_path / "src"
    synth.write(src, [5, 4], synth.features(size=16))
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "datasets--acme--demo"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(src, repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "empty"))
    ds = LeRobotDataset("acme/demo")
    assert ds.num_episodes == 2 and len(ds) == 9
    with pytest.raises(FileNotFoundError, match="--repo-type dataset"):
        LeRobotDataset("acme/missing")
