"""The Colab notebook (examples/finetune_so101_colab.ipynb), top to bottom, as CI runs it.

papermill executes the notebook's own cells with parameters that swap the hub for a dataset and a checkpoint
built here, and the GPU for the CPU: a dataset of SO-101's shape (six joints named as LeRobot's driver names
them, two cameras with their own names) and a base of smolvla_base's shape (cameras camera1..3, frozen VLM,
bf16 weights), at the tiny preset's size. Both fine-tunes run a few steps; every figure and file the
notebook promises must exist."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

papermill = pytest.importorskip("papermill")

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "finetune_so101_colab.ipynb"
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


def so101_dataset(root: Path, episodes: int = 4, length: int = 12) -> Path:
    from smolvla.data import DatasetWriter
    from tests.data.synth import frame

    names = [f"{j}.pos" for j in JOINTS]
    feats = {
        "observation.state": {"dtype": "float32", "shape": [6], "names": names},
        "action": {"dtype": "float32", "shape": [6], "names": names},
        "observation.images.up": {"dtype": "video", "shape": [32, 32, 3], "names": None},
        "observation.images.side": {"dtype": "video", "shape": [32, 32, 3], "names": None},
    }
    rng = np.random.default_rng(0)
    with DatasetWriter.create(root, fps=30, features=feats, robot_type="so101_follower") as w:
        for e in range(episodes):
            state = np.cumsum(rng.normal(size=(length, 6)), 0).astype(np.float32)
            for i in range(length):
                w.add_frame(
                    {
                        "observation.state": state[i],
                        "action": state[min(i + 1, length - 1)],
                        "observation.images.up": frame(e, i, 32, 32, 0),
                        "observation.images.side": frame(e, i, 32, 32, 1),
                        "task": "pick up the cube and put it in the box",
                    }
                )
            w.save_episode()
    return root


def base_checkpoint(folder: Path) -> Path:
    """smolvla_base's shape at the tiny preset's size: three cameras, six-dim state and action, the VLM
    frozen (train_expert_only), the backbone stored in bf16; processors with unit statistics."""
    import torch

    from smolvla.config import FeatureType, PolicyFeature, preset
    from smolvla.policy import SmolVLAPolicy
    from smolvla.processing import make_pre_post_processors, unit_stats

    cfg = preset("tiny")
    cams = {
        f"observation.images.camera{i}": PolicyFeature(FeatureType.VISUAL, (3, 64, 64)) for i in (1, 2, 3)
    }
    cfg = dataclasses.replace(
        cfg,
        input_features={**cams, "observation.state": PolicyFeature(FeatureType.STATE, (6,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (6,))},
        train_expert_only=True,
        freeze_vision_encoder=True,
    )
    torch.manual_seed(0)
    policy = SmolVLAPolicy.from_config(cfg)
    policy._file_dtypes = {
        k: torch.bfloat16 if k.startswith("model.vlm_with_expert.") else torch.float32
        for k in policy.state_dict()
    }
    policy.save_pretrained(folder)
    pre, post = make_pre_post_processors(cfg, dataset_stats=unit_stats(cfg))
    pre.save(folder)
    post.save(folder)
    return folder


def test_the_colab_notebook_runs_top_to_bottom(tmp_path):
    data = so101_dataset(tmp_path / "so101")
    base = base_checkpoint(tmp_path / "base")
    out = tmp_path / "run"
    params = {
        "BASE": str(base),
        "DATASET": str(data),
        "HELD_OUT": 1,
        "STEPS": 3,
        "BATCH_SIZE": 2,
        "LORA_R": 4,
        "DEVICE": "cpu",
        "NUM_WORKERS": 0,
        "MAX_FRAMES": 3,
        "OUTPUT": str(out),
        "INSTALL": "",
        "PUSH_TO": "",
    }
    executed = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(executed),
        parameters=params,
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
    )
    for name in ("loss.png", "held_out_actions.png", "held_out.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "held_out.json").read_text())
    assert report["frames"] == 3 and report["held_out_episodes"] == [3]
    for mode in ("lora", "expert"):
        assert len(report[mode]["first_action_mae_per_dim"]) == 6 and report[mode]["chunk_mae"] > 0
    lora = out / "lora" / "checkpoints" / "last" / "pretrained_model"
    assert (lora / "adapter_model.safetensors").is_file()
    assert json.loads((lora / "adapter_config.json").read_text())["r"] == 4
    assert (out / "expert" / "checkpoints" / "last" / "pretrained_model" / "model.safetensors").is_file()
    assert (out / "lora_merged" / "model.safetensors").is_file()
    # the notebook's rename map and empty cameras reached the trained config
    cfg = json.loads((lora / "config.json").read_text())
    assert cfg["empty_cameras"] == 1 and sorted(cfg["input_features"])[:3] == [
        f"observation.images.camera{i}" for i in (1, 2, 3)
    ]
    text = executed.read_text()
    assert "rename_map:" in text and "first action MAE" in text
