"""The quickstart end to end at toy scale: record, train, evaluate, report."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
pytest.importorskip("metaworld")

from smolvla.apps.quickstart import QuickstartConfig, run


@pytest.mark.parametrize("processes", [1, 2])
def test_quickstart_runs_end_to_end(tmp_path, processes):
    cfg = QuickstartConfig(
        output_dir=tmp_path / "qs",
        tasks=("drawer-close-v3", "button-press-topdown-v3"),
        episodes=2,
        image_size=32,
        steps=4,
        batch_size=8,
        eval_episodes=1,
        num_workers=0,
        processes=processes,  # 2: the torchrun (DDP) path
    )
    summary = run(cfg)
    saved = json.loads((tmp_path / "qs" / "quickstart_report.json").read_text())
    assert saved["success"].keys() == {"drawer-close-v3", "button-press-topdown-v3"}
    assert 0 <= saved["mean_success"] <= 1 and saved == json.loads(json.dumps(summary))
    assert saved["demonstrations"]["episodes"] == 4
    assert saved["config"]["processes"] == processes
    assert min(saved["eval_seeds"]) >= 1_000_000  # never the recording's seeds
    for key in ("training_curves", "eval_report"):
        assert os.path.exists(saved["files"][key]), key
    assert len(os.listdir(saved["files"]["videos"])) == 2
    with pytest.raises(ValueError, match="is not empty"):
        run(cfg)


def test_batch_must_split_over_processes():
    with pytest.raises(ValueError, match="--batch-size: got 63, expected a multiple of --processes"):
        QuickstartConfig(batch_size=63, processes=2)
