"""The quickstart end to end at toy scale: record, train, evaluate, report."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
pytest.importorskip("metaworld")

from smolvla.apps.cli import parse
from smolvla.apps.quickstart import QuickstartConfig, run


@pytest.mark.parametrize("processes", [1, 2])
def test_quickstart_runs_end_to_end(tmp_path, processes):
    _, cfg = parse(
        [
            "quickstart",
            f"--output_dir={tmp_path / 'qs'}",
            "--env.task=drawer-close-v3,button-press-topdown-v3",
            "--dataset.num_episodes=2",
            "--env.image_size=32",
            "--steps=4",
            "--batch_size=8",
            "--eval.n_episodes=1",
            "--num_workers=0",
            f"--num_processes={processes}",  # 2: the torchrun (DDP) path
        ]
    )
    summary = run(cfg)
    saved = json.loads((tmp_path / "qs" / "quickstart_report.json").read_text())
    assert saved["success"].keys() == {"drawer-close-v3", "button-press-topdown-v3"}
    assert 0 <= saved["mean_success"] <= 1 and saved == json.loads(json.dumps(summary))
    assert saved["demonstrations"]["episodes"] == 4
    assert saved["config"]["num_processes"] == processes
    assert min(saved["eval_seeds"]) >= 1_000_000  # never the recording's seeds
    for key in ("training_curves", "eval_report"):
        assert os.path.exists(saved["files"][key]), key
    assert len(os.listdir(saved["files"]["videos"])) == 2
    with pytest.raises(ValueError, match="is not empty"):
        run(cfg)


def test_batch_must_split_over_processes():
    with pytest.raises(ValueError, match="--batch_size: got 63, expected a multiple of --num_processes"):
        QuickstartConfig(batch_size=63, num_processes=2)


def test_defaults_are_unchanged_and_old_spellings_still_work(capsys):
    _, default = parse(["quickstart"])
    assert default == QuickstartConfig()
    assert (default.output_dir, default.steps, default.batch_size, default.seed) == (
        "outputs/quickstart",
        2000,
        64,
        0,
    )
    assert (default.dataset.num_episodes, default.env.image_size, default.eval.n_episodes) == (40, 64, 20)
    assert default.tasks == (
        "button-press-topdown-v3",
        "handle-press-v3",
        "drawer-close-v3",
        "plate-slide-v3",
        "door-close-v3",
    )
    _, old = parse(
        [
            "quickstart",
            "--output-dir",
            "x",
            "--tasks",
            "easy",
            "--episodes",
            "3",
            "--batch-size=8",
            "--augment",
        ]
    )
    assert (old.output_dir, old.env.task, old.dataset.num_episodes, old.batch_size) == ("x", "easy", 3, 8)
    assert old.dataset.augment is True
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "smolvla quickstart: --output-dir is deprecated, use --output_dir=..."
    assert err[-1] == "smolvla quickstart: --augment is deprecated, use --dataset.augment=true"
    assert len(err) == 5
