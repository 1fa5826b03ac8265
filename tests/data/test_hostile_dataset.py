"""Hostile and careless datasets: metadata that contradicts the data, missing and truncated files, stats that
cannot be right. Each is an error (or a problem of `check_dataset`) naming the file or field and the value,
and checking never changes a file of the dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from smolvla.data import DatasetError, LeRobotDataset, LeRobotDatasetMeta, check_dataset
from smolvla.data.check import check_mode
from smolvla.data.tools import info
from smolvla.train import TrainConfig, train
from smolvla.train.config import DatasetConfig, TrainPolicyConfig
from tests.data import synth

CAM = "observation.images.top"
IMG = "observation.images.wrist"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "ds"
    synth.write(root, [6, 5, 7], synth.features(size=16, cams=("top",), image="wrist"))
    return root


@pytest.fixture
def ds(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "ds"))


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def edit_json(path: Path, edit) -> None:
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d, indent=4))


def problems(root: Path, full: bool = False) -> str:
    before = snapshot(root)
    report = check_dataset(root, full=full)
    assert snapshot(root) == before
    return "\n".join(report.problems)


def info_fails(root: Path, match: str) -> None:
    before = snapshot(root)
    with pytest.raises(DatasetError, match=match):
        info(root)
    assert snapshot(root) == before


def test_a_pristine_dataset_passes_both_checks(ds):
    quick, full = check_dataset(ds), check_dataset(ds, full=True)
    assert quick.ok and full.ok, quick.problems + full.problems
    assert (quick.episodes, quick.frames) == (3, 18)
    assert quick.frames_decoded == 0 and full.frames_decoded == 2 * 18  # video and PNG camera
    info(ds)


# -- stats ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("feature", "stat", "value", "match"),
    [
        ("action", "std", [-1.0, 1.0, 1.0], r"\['action'\]\['std'\] is negative: \[-1, 1, 1\]"),
        ("action", "std", [float("nan"), 1.0, 1.0], r"\['action'\]\['std'\] is not finite"),
        ("action", "min", [99.0, -9.0, -9.0], r"\['action'\]: min > max at index 0 \(99 > "),
        ("observation.state", "mean", [0.0] * 7, r"\['observation.state'\]\['mean'\] has shape \(7,\)"),
        (CAM, "q01", [[[2.0]], [[0.0]], [[0.0]]], r"q01 > q99 at index 0"),
        ("action", "count", [0], r"\['action'\]\['count'\] is \[0\], expected a count >= 1"),
    ],
)
def test_stats_that_cannot_be_right_are_rejected_where_loaded(ds, feature, stat, value, match):
    def edit(d: dict) -> None:
        d[feature][stat] = value

    edit_json(ds / "meta/stats.json", edit)
    before = snapshot(ds)
    with pytest.raises(DatasetError, match=r"meta/stats.json.*" + match):
        LeRobotDatasetMeta.load(ds)
    assert snapshot(ds) == before
    info_fails(ds, match)
    assert "meta/stats.json" in problems(ds)


# -- info.json that does not parse as features -----------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda f: f["action"].update(shape="[3]"), r"feature 'action' has shape '\[3\]', expected a list"),
        (lambda f: f["action"].update(shape=[0]), r"feature 'action' has shape \[0\]"),
        (lambda f: f["action"].update(shape=[True, 3]), r"feature 'action' has shape \[True, 3\]"),
        (lambda f: f["action"].update(dtype="float128"), r"feature 'action' has dtype 'float128'"),
        (lambda f: f[CAM].update(shape=[16, 16]), r"camera 'observation.images.top' has shape \[16, 16\]"),
        (lambda d: d.update(fps=29.97), r"fps is 29.97, expected a positive integer"),
        (lambda d: d.update(fps=True), r"fps is True, expected a positive integer"),
        (lambda d: d.update(total_frames="18"), r"total_frames is '18', expected a non-negative integer"),
        (lambda d: d.update(total_episodes=None), r"total_episodes is None, expected a non-negative integer"),
        (lambda d: d.update(chunks_size=0), r"chunks_size is 0, expected a positive integer"),
        (lambda d: d.pop("video_path"), r"video_path is None, expected a path template"),
    ],
)
def test_info_metadata_is_checked_where_parsed(ds, edit, match):
    per_feature = "feature" in match or "camera" in match
    edit_json(ds / "meta/info.json", lambda d: edit(d["features"] if per_feature else d))
    before = snapshot(ds)
    with pytest.raises(DatasetError, match=match):
        LeRobotDatasetMeta.load(ds)
    assert snapshot(ds) == before


# -- metadata that contradicts the data ------------------------------------------------------------------


def test_camera_shape_the_videos_do_not_have(ds):
    edit_json(ds / "meta/info.json", lambda d: d["features"][CAM].update(shape=[32, 24, 3]))
    found = problems(ds)
    assert (
        "frames are 16 x 16, but info.json gives camera 'observation.images.top' shape [32, 24, 3]" in found
    )
    info_fails(ds, r"frames are 16 x 16")
    with pytest.raises(DatasetError, match=r"frames are 16 x 16, but info.json gives camera"):
        LeRobotDataset(ds)  # the reader itself, for uses other than training


def test_image_shape_the_pngs_do_not_have_needs_the_full_check(ds):
    edit_json(ds / "meta/info.json", lambda d: d["features"][IMG].update(shape=[8, 8, 3]))
    assert problems(ds) == ""  # PNGs are only decoded by the full check
    assert "frame 0 of 'observation.images.wrist' is 16 x 16, info.json says 8 x 8" in problems(ds, full=True)


def test_total_frames_the_parquet_files_do_not_hold(ds):
    edit_json(ds / "meta/info.json", lambda d: d.update(total_frames=25))
    assert "total_frames is 25, but the episodes hold 18 frames" in problems(ds)
    info_fails(ds, "total_frames is 25")


def test_fps_the_timestamps_do_not_follow(ds):
    edit_json(ds / "meta/info.json", lambda d: d.update(fps=20))
    found = problems(ds)
    assert "frame 1 has timestamp 0.1 s, expected 0.05 s" in found
    assert "the video runs at 10 fps, info.json says fps 20" in found


def test_total_tasks_that_disagree(ds):
    edit_json(ds / "meta/info.json", lambda d: d.update(total_tasks=5))
    assert "total_tasks is 5, but the dataset has 2" in problems(ds)


def test_rows_that_disagree_with_the_episodes_metadata(ds):
    data = next((ds / "data").rglob("*.parquet"))
    table = pq.read_table(data)
    pq.write_table(table.slice(0, table.num_rows - 2), data)  # the last episode loses two frames
    assert "episode 2 has 5 rows, the episodes metadata says 7 frames" in problems(ds)


# -- missing and truncated files -------------------------------------------------------------------------


def test_missing_video_file_fails_info(ds):
    video = next((ds / "videos").rglob("*.mp4"))
    video.unlink()
    assert (
        f"{video}: video file of camera 'observation.images.top', episodes [0, 1, 2], is missing"
        in problems(ds)
    )
    info_fails(ds, "is missing")  # it used to print a summary and exit 0


def test_missing_parquet_file_fails_info(ds):
    data = next((ds / "data").rglob("*.parquet"))
    data.unlink()
    assert f"{data}: data file of episodes [0, 1, 2] is missing" in problems(ds)
    info_fails(ds, "data file of episodes")


def test_truncated_video(ds):
    video = next((ds / "videos").rglob("*.mp4"))
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    assert str(video) in problems(ds)
    assert str(video) in problems(ds, full=True)


def test_every_problem_is_reported_at_once(ds):
    edit_json(ds / "meta/info.json", lambda d: d.update(total_frames=99))
    next((ds / "videos").rglob("*.mp4")).unlink()
    report = check_dataset(ds)
    assert len(report.problems) == 2
    with pytest.raises(DatasetError, match=r"2 problem\(s\) found by the quick dataset check"):
        report.raise_for_problems()


def test_not_a_dataset_is_one_problem(tmp_path):
    report = check_dataset(tmp_path)
    assert not report.ok and "has no meta/info.json" in report.problems[0]


# -- training runs the check before the first step -------------------------------------------------------


def _train(ds: Path, out: Path, check: str = "quick") -> Path:
    cfg = TrainConfig(
        dataset=DatasetConfig(repo_id=str(ds), check=check),
        policy=TrainPolicyConfig(preset="micro"),
        output_dir=str(out),
        steps=1,
        batch_size=2,
        num_workers=0,
        precision="fp32",
    )
    return train(cfg, progress=False)


def test_training_refuses_a_dataset_that_contradicts_its_metadata(ds, tmp_path):
    edit_json(ds / "meta/info.json", lambda d: d["features"][CAM].update(shape=[32, 24, 3]))
    with pytest.raises(DatasetError, match="frames are 16 x 16"):
        _train(ds, tmp_path / "out")
    assert not (tmp_path / "out/checkpoints").exists()


def test_training_full_check_decodes_every_frame(ds, tmp_path):
    edit_json(ds / "meta/info.json", lambda d: d["features"][IMG].update(shape=[8, 8, 3]))
    with pytest.raises(DatasetError, match=r"info\.json says 8 x 8"):
        _train(ds, tmp_path / "out", check="full")


def test_check_mode_names_the_field():
    assert check_mode("full") and not check_mode("quick")
    with pytest.raises(
        DatasetError, match=r"dataset.check: got 'thorough', expected one of \['quick', 'full'\]"
    ):
        check_mode("thorough")
