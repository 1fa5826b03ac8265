"""DatasetWriter: what it writes (values, LeRobot's files and fields), video files joined per size cap,
resume, and every bad input rejected with a message naming the feature, episode and frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from smolvla.data import DatasetError, DatasetWriter, LeRobotDataset, VideoSettings
from smolvla.data.format import STAGING_DIR
from tests.data import synth

EPISODE_COLUMNS = [
    "episode_index",
    "tasks",
    "length",
    "data/chunk_index",
    "data/file_index",
    "dataset_from_index",
    "dataset_to_index",
]


def _frames_close(item_img: torch.Tensor, want: np.ndarray, lossless: bool = False) -> None:
    got = (item_img.permute(1, 2, 0).numpy() * 255).round()
    if lossless:
        np.testing.assert_array_equal(got, want)
    else:
        assert np.abs(got - want).mean() < 4, np.abs(got - want).mean()


def test_round_trip(tmp_path: Path) -> None:
    feats = synth.features(size=16, cams=("top", "wrist"), image="side")
    written = synth.write(tmp_path / "ds", [5, 6, 7], feats, robot_type="sawyer")
    ds = LeRobotDataset(tmp_path / "ds")
    assert (len(ds), ds.num_episodes, ds.fps) == (18, 3, synth.FPS)
    i = 0
    for e, frames in enumerate(written):
        for f, fr in enumerate(frames):
            item = ds[i]
            np.testing.assert_array_equal(item["observation.state"].numpy(), fr["observation.state"])
            np.testing.assert_array_equal(item["action"].numpy(), fr["action"])
            _frames_close(item["observation.images.top"], fr["observation.images.top"])
            _frames_close(item["observation.images.wrist"], fr["observation.images.wrist"])
            _frames_close(item["observation.images.side"], fr["observation.images.side"], lossless=True)
            assert item["task"] == fr["task"]
            assert (int(item["episode_index"]), int(item["frame_index"]), int(item["index"])) == (e, f, i)
            assert float(item["timestamp"]) == pytest.approx(f / synth.FPS)
            assert item["observation.images.top"].dtype == torch.float32
            assert item["timestamp"].shape == () and item["index"].dtype == torch.int64
            i += 1
    # Stats: numeric features exact over all frames, counts add up.
    states = np.concatenate([[fr["observation.state"] for fr in frames] for frames in written])
    np.testing.assert_allclose(ds.stats["observation.state"]["mean"], states.astype(np.float64).mean(0))
    np.testing.assert_allclose(ds.stats["observation.state"]["std"], states.astype(np.float64).std(0))
    assert ds.stats["observation.images.top"]["mean"].shape == (3, 1, 1)
    assert all(int(s["count"][0]) == 18 for s in ds.stats.values())


def test_files_and_fields_lerobot_reads(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    synth.write(root, [3, 4], robot_type="sawyer")
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (2, 7, 2)
    assert info["splits"] == {"train": "0:2"} and info["robot_type"] == "sawyer"
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert (info["chunks_size"], info["data_files_size_in_mb"], info["video_files_size_in_mb"]) == (
        1000,
        100,
        200,
    )
    assert list(info["features"])[-5:] == ["timestamp", "frame_index", "episode_index", "index", "task_index"]
    cam = info["features"]["observation.images.top"]
    assert cam["names"] == ["height", "width", "channels"] and cam["shape"] == [16, 16, 3]
    vi = cam["info"]
    assert (vi["video.codec"], vi["video.pix_fmt"], vi["video.fps"], vi["video.g"]) == (
        "h264",
        "yuv420p",
        10,
        2,
    )
    assert (vi["video.height"], vi["video.width"], vi["video.channels"], vi["is_depth_map"]) == (
        16,
        16,
        3,
        False,
    )

    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column_names == ["task_index", "task"]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
    assert eps.column_names[:7] == EPISODE_COLUMNS
    for col in ["videos/observation.images.top/from_timestamp", "stats/action/q99", "stats/index/count"]:
        assert col in eps.column_names
    rows = eps.to_pylist()
    assert [r["videos/observation.images.top/from_timestamp"] for r in rows] == [0.0, 0.3]
    assert [r["videos/observation.images.top/to_timestamp"] for r in rows] == [0.3, 0.7]
    assert (
        rows[1]["stats/observation.images.top/mean"]
        == np.asarray(rows[1]["stats/observation.images.top/mean"]).reshape(3, 1, 1).tolist()
    )
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    state_type = data.schema.field("observation.state").type
    assert pa.types.is_fixed_size_list(state_type) and state_type.list_size == 4
    assert state_type.value_type == pa.float32()
    assert str(data.schema.field("timestamp").type) == "float"
    assert b"huggingface" in data.schema.metadata
    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats["action"]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    assert not (root / STAGING_DIR).exists()


def test_av1_videos(tmp_path: Path) -> None:
    written = synth.write(tmp_path / "ds", [3, 2], synth.features(size=32), video_codec="libsvtav1")
    ds = LeRobotDataset(tmp_path / "ds")
    info = ds.meta.features["observation.images.top"]["info"]
    assert (info["video.codec"], info["video.crf"], info["video.preset"]) == ("av1", 30, 12)
    _frames_close(ds[4]["observation.images.top"], written[1][1]["observation.images.top"])


def test_video_files_split_at_the_size_cap_and_stay_exact(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    written = synth.write(root, [4, 3, 5, 2, 6, 3], video_files_size_in_mb=0.004)
    ds = LeRobotDataset(root)
    files = sorted((root / "videos/observation.images.top/chunk-000").glob("*.mp4"))
    assert len(files) > 1
    assert [p.name for p in files] == [f"file-{i:03d}.mp4" for i in range(len(files))]  # contiguous
    starts = {}
    for ep in ds.meta.episodes:
        path, start = ep.videos["observation.images.top"]
        assert start == pytest.approx(starts.get(path, 0.0))  # episodes are back to back in each file
        starts[path] = start + ep.length / synth.FPS
    i = 0
    for frames in written:
        for fr in frames:
            _frames_close(ds[i]["observation.images.top"], fr["observation.images.top"])
            i += 1


def test_unfinalized_writer_leaves_a_valid_dataset_and_resume_continues(tmp_path: Path) -> None:
    root, feats = tmp_path / "ds", synth.features()
    w = DatasetWriter.create(root, fps=synth.FPS, features=feats)
    for e, n in enumerate([3, 4]):
        for fr in synth.episode(e, n, feats):
            w.add_frame(dict(fr))
        w.save_episode()
    for fr in synth.episode(2, 2, feats):  # an unsaved episode is discarded by close()
        w.add_frame(dict(fr))
    w.close()
    assert len(list((root / "videos").rglob("*.mp4"))) == 2  # one file per episode until joined
    assert LeRobotDataset(root).num_episodes == 2

    w = DatasetWriter.resume(root)
    assert (w.num_episodes, w.num_frames) == (2, 7)
    for fr in synth.episode(2, 5, feats):
        w.add_frame(dict(fr))
    assert w.save_episode() == 2
    w.finalize()
    ds = LeRobotDataset(root)
    assert [ep.length for ep in ds.meta.episodes] == [3, 4, 5]
    # Episodes 0-1 were joined at resume; the new session's episode went to the next file.
    names = sorted(p.name for p in (root / "videos").rglob("*.mp4"))
    assert names == ["file-000.mp4", "file-001.mp4"]
    assert sorted(p.name for p in (root / "data").rglob("*.parquet")) == [
        "file-000.parquet",
        "file-001.parquet",
    ]
    _frames_close(ds[8]["observation.images.top"], synth.episode(2, 5, feats)[1]["observation.images.top"])
    assert int(ds[8]["index"]) == 8


def test_tasks_within_an_episode_and_inputs_in_other_layouts(tmp_path: Path) -> None:
    root, feats = tmp_path / "ds", synth.features()
    with DatasetWriter.create(root, fps=synth.FPS, features=feats) as w:
        for i, fr in enumerate(synth.episode(0, 4, feats)):
            fr = dict(fr, task="pick" if i < 2 else "place")
            fr["observation.images.top"] = torch.from_numpy(fr["observation.images.top"]).permute(2, 0, 1)
            fr["action"] = torch.from_numpy(fr["action"])
            w.add_frame(fr)
        w.save_episode()
    ds = LeRobotDataset(root)
    assert [ds[i]["task"] for i in range(4)] == ["pick", "pick", "place", "place"]
    assert ds.meta.episodes[0].tasks == ("pick", "place")
    assert ds.meta.tasks == ["pick", "place"]


def test_arrays_reused_by_the_caller_are_copied(tmp_path: Path) -> None:
    feats = synth.features()
    buf = np.zeros(synth.STATE_DIM, np.float32)  # a simulator's observation buffer, overwritten in place
    with DatasetWriter.create(tmp_path / "ds", fps=synth.FPS, features=feats) as w:
        for i, fr in enumerate(synth.episode(0, 3, feats)):
            buf[:] = i
            w.add_frame(dict(fr, **{"observation.state": buf}))
        w.save_episode()
    ds = LeRobotDataset(tmp_path / "ds")
    assert [ds[i]["observation.state"][0].item() for i in range(3)] == [0.0, 1.0, 2.0]


@pytest.fixture
def writer(tmp_path: Path):
    w = DatasetWriter.create(tmp_path / "ds", fps=synth.FPS, features=synth.features())
    yield w
    w.close()


def _frame(**changes):
    fr = dict(synth.episode(0, 1, synth.features())[0])
    fr.update(changes)
    return {k: v for k, v in fr.items() if v is not None}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (
            {"action": np.zeros(4, np.float32)},
            r"episode 0, frame 0: feature 'action' has shape \[4\], expected \[3\]",
        ),
        ({"action": np.zeros(3, np.float64)}, r"feature 'action' has dtype float64, expected float32"),
        ({"action": [0.0, 0.0, 0.0]}, r"feature 'action' got list, expected a numpy array"),
        (
            {"observation.state": np.array([0, np.nan, 0, 0], np.float32)},
            r"'observation.state' holds NaN .* \[1\]",
        ),
        (
            {"observation.images.top": np.zeros((16, 16, 3), np.float32)},
            r"camera 'observation.images.top' got",
        ),
        (
            {"observation.images.top": np.zeros((8, 8, 3), np.uint8)},
            r"'observation.images.top' has shape \[8, 8, 3\]",
        ),
        ({"action": None}, r"missing features \['action'\]"),
        ({"gripper": np.zeros(1, np.float32)}, r"unknown features \['gripper'\]"),
        ({"timestamp": np.zeros(1, np.float32)}, r"\['timestamp'\] are filled by the writer"),
        ({"task": ""}, r"'task' got ''"),
        ({"task": None}, r"missing features \['task'\]"),
    ],
)
def test_bad_frames_are_rejected_and_leave_nothing(writer: DatasetWriter, changes: dict, match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        writer.add_frame(_frame(**changes))
    assert writer.episode_length == 0
    writer.add_frame(_frame())
    assert writer.episode_length == 1


def test_shape_change_mid_episode_names_the_frame(writer: DatasetWriter) -> None:
    for _ in range(3):
        writer.add_frame(_frame())
    with pytest.raises(DatasetError, match=r"episode 0, frame 3: .* frames 0..2 of this episode had \[3\]"):
        writer.add_frame(_frame(action=np.zeros(5, np.float32)))


def test_empty_episode_and_unsaved_frames(writer: DatasetWriter) -> None:
    with pytest.raises(DatasetError, match="episode 0 has no frames"):
        writer.save_episode()
    writer.add_frame(_frame())
    with pytest.raises(DatasetError, match="1 unsaved frames"):
        writer.finalize()
    writer.clear_episode()
    writer.finalize()
    with pytest.raises(DatasetError, match="finalized"):
        writer.add_frame(_frame())


def test_one_writer_per_dataset(writer: DatasetWriter) -> None:
    with pytest.raises(DatasetError, match="another DatasetWriter"):
        DatasetWriter.resume(writer.root)


@pytest.mark.parametrize(
    ("features", "match"),
    [
        ({"timestamp": {"dtype": "float32", "shape": [1]}}, "filled by the writer"),
        ({"a/b": {"dtype": "float32", "shape": [1]}}, "without '/'"),
        ({"x": {"dtype": "float8", "shape": [1]}}, r"x'\]\.dtype"),
        ({"x": {"dtype": "float32", "shape": [0]}}, "positive integers"),
        ({"x": {"dtype": "float32", "shape": [2, 2]}}, r"expected \[D\]"),
        ({"cam": {"dtype": "video", "shape": [16, 16]}}, r"\[height, width, 3\]"),
        ({"cam": {"dtype": "video", "shape": [15, 16, 3]}}, "must be even"),
        ({"x": {"dtype": "float32", "shape": [2], "names": ["a"]}}, "1 names for shape"),
        ({}, "non-empty mapping"),
    ],
)
def test_bad_features(tmp_path: Path, features: dict, match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        DatasetWriter.create(tmp_path / "ds", fps=10, features=features)
    assert not (tmp_path / "ds" / "meta").exists()


def test_create_refuses_existing_data(tmp_path: Path) -> None:
    synth.write(tmp_path / "ds", [2])
    with pytest.raises(DatasetError, match=r"DatasetWriter\.resume"):
        DatasetWriter.create(tmp_path / "ds", fps=10, features=synth.features())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("")
    with pytest.raises(DatasetError, match="not an empty folder"):
        DatasetWriter.create(tmp_path / "other", fps=10, features=synth.features())
    with pytest.raises(DatasetError, match="fps"):
        DatasetWriter.create(tmp_path / "new", fps=0, features=synth.features())
    with pytest.raises(DatasetError, match="too small for libsvtav1"):
        DatasetWriter.create(
            tmp_path / "new3", fps=10, features=synth.features(size=16), video_codec="libsvtav1"
        )
    with pytest.raises(DatasetError, match="pix_fmt"):
        DatasetWriter.create(
            tmp_path / "new2", fps=10, features=synth.features(), video=VideoSettings(pix_fmt="x")
        )
