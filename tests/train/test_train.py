"""Training end to end on a tiny dataset: outputs, exact resume, DDP equals one process, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smolvla.apps.cli import parse
from smolvla.errors import SmolVLAError
from smolvla.policy import SmolVLAPolicy
from smolvla.train import TrainConfig, TrainingError, train
from tests.data import synth

# fp32: the equivalence checks are about float tolerance, not bf16 rounding (auto picks bf16 on some CPUs)
FLAGS = [
    "--policy.type=smolvla",
    "--policy.preset=micro",
    "--batch_size=4",
    "--num_workers=0",
    "--seed=3",
    "--precision=fp32",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds") / "tiny"
    feats = synth.features(size=16, cams=("camera1",))
    synth.write(root, [12, 9, 11], feats)
    return root


def parse_args(argv: list[str]) -> TrainConfig:
    """`smolvla train ARGV`'s config, as the command line builds it."""
    command, cfg = parse(["train", *argv])
    assert command == "train"
    return cfg


def run(dataset: Path, out: Path, *extra: str, stop_at: int | None = None) -> Path:
    cfg = parse_args([f"--dataset.repo_id={dataset}", f"--output_dir={out}", *FLAGS, *extra])
    return train(cfg, progress=False, stop_at=stop_at)


def weights(out: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    ckpt = out / "checkpoints" / (f"{step:06d}" if step else "last") / "pretrained_model"
    return load_file(ckpt / "model.safetensors")


def test_training_writes_checkpoints_metrics_and_curves(dataset, tmp_path):
    out = run(dataset, tmp_path / "run", "--steps=6", "--save_freq=3", "--log_freq=2")
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["000003", "000006", "last"]
    assert (ckpts / "last").resolve().name == "000006"
    model = ckpts / "last" / "pretrained_model"
    for name in (
        "config.json",
        "model.safetensors",
        "policy_preprocessor.json",
        "policy_postprocessor.json",
        "train_config.json",
    ):
        assert (model / name).is_file(), name
    for name in (
        "optimizer_state.safetensors",
        "optimizer_param_groups.json",
        "scheduler_state.json",
        "rng_state.safetensors",
        "training_step.json",
    ):
        assert (ckpts / "last" / "training_state" / name).is_file(), name
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [2, 4, 6] and all(r["loss"] > 0 for r in recs)
    assert (out / "training_curves.png").stat().st_size > 1000
    policy = SmolVLAPolicy.from_pretrained(model)
    # a random backbone is trained, not frozen
    assert policy.config.freeze_vision_encoder is False and policy.config.train_expert_only is False
    assert policy.config.input_features["observation.images.camera1"].shape == (3, 16, 16)
    saved = TrainConfig.from_dict(json.loads((model / "train_config.json").read_text()))
    assert saved.steps == 6 and saved.batch_size == 4


def test_resume_is_exact(dataset, tmp_path):
    """Stopped at step 3 and resumed, a run reaches the same weights at step 7 as one that never stopped
    (augmentation on, an epoch boundary crossed: 32 frames / batch 4 = 8 batches per epoch)."""
    extra = ("--steps=9", "--save_freq=100", "--dataset.augment=true")
    straight = run(dataset, tmp_path / "a", *extra)
    stopped = run(dataset, tmp_path / "b", *extra, stop_at=3)
    assert (stopped / "checkpoints" / "last").resolve().name == "000003"
    # LeRobot's way: the output folder alone; the run's flags come from its last train_config.json
    cfg = parse_args([f"--output_dir={stopped}", "--resume=true"])
    assert cfg.dataset.repo_id == str(dataset) and cfg.steps == 9 and cfg.resume
    train(cfg, progress=False)
    a, b = weights(straight, 9), weights(stopped, 9)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def test_resume_from_a_config_file_with_overrides(dataset, tmp_path):
    out = run(dataset, tmp_path / "run", "--steps=2", "--save_freq=100")
    saved = out / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
    cfg = parse_args([f"--config_path={saved}", "--resume=true", "--steps=3", "--log_freq=1"])
    assert (cfg.steps, cfg.log_freq, cfg.output_dir) == (3, 1, str(out))
    train(cfg, progress=False)
    assert (out / "checkpoints" / "last").resolve().name == "000003"
    # what makes it the same run cannot change, and the message names the flags
    changed = parse_args([f"--output_dir={out}", "--resume=true", "--steps=4", "--batch_size=2", "--seed=9"])
    with pytest.raises(TrainingError, match=r"cannot change --batch_size, --seed"):
        train(changed, progress=False)
    with pytest.raises(SmolVLAError, match="holds no checkpoint"):
        parse_args([f"--output_dir={tmp_path / 'none'}", "--resume=true"])


def test_ddp_two_processes_match_one(dataset, tmp_path):
    """torchrun with 2 CPU processes (gloo) x batch 2 gives the single-process batch-4 result."""
    # chunk 8 on 9-12 frame episodes: many padded steps, unevenly spread over the two processes' halves
    single = run(
        dataset, tmp_path / "single", "--steps=3", "--save_freq=100", "--log_freq=1", "--policy.chunk_size=8"
    )
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29517",
        "-m",
        "smolvla.apps.cli",
        "train",
        f"--dataset.repo_id={dataset}",
        f"--output_dir={out}",
        *FLAGS,
        "--batch_size=2",
        "--steps=3",
        "--save_freq=100",
        "--log_freq=1",
        "--policy.chunk_size=8",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = weights(single), weights(out)
    # The vision k_proj biases have a gradient of exactly zero in exact arithmetic (softmax ignores a shift
    # shared by all keys), so theirs is rounding noise that Adam scales up to +-lr: excluded.
    keys = [k for k in a if not ("vision_model" in k and k.endswith("k_proj.bias"))]
    diff = max((a[k] - b[k]).abs().max().item() for k in keys)
    assert diff < 1e-5, diff
    logs = [[json.loads(x) for x in (o / "metrics.jsonl").read_text().splitlines()] for o in (single, out)]
    for r1, r2 in zip(*logs, strict=True):  # the global batch's loss and gradient norm at every step
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-5)
        assert r1["grad_norm"] == pytest.approx(r2["grad_norm"], rel=1e-5)


def test_refuses_to_mix_runs(dataset, tmp_path):
    run(dataset, tmp_path / "run", "--steps=1")
    with pytest.raises(TrainingError, match="already holds a run; pass --resume=true"):
        run(dataset, tmp_path / "run", "--steps=1")
    with pytest.raises(SmolVLAError, match="holds no checkpoint"):
        run(dataset, tmp_path / "empty", "--steps=1", "--resume=true")


def test_fine_tune_checks_features_and_suggests_rename_map(dataset, tmp_path, micro_policy):
    micro_policy.save_pretrained(tmp_path / "ckpt")  # expects camera1 and camera2 and state 3
    cfg = parse_args(
        [
            f"--dataset.repo_id={dataset}",
            f"--output_dir={tmp_path / 'ft'}",
            "--num_workers=0",
            f"--policy.path={tmp_path / 'ckpt'}",
            "--steps=1",
        ]
    )
    with pytest.raises(TrainingError, match=r"does not provide the checkpoint's cameras.*--rename_map"):
        train(cfg, progress=False)
    # with one camera allowed to be absent it fine-tunes; the state width comes from the dataset
    policy = dataclasses.replace(cfg.policy, overrides={"empty_cameras": "1"})
    out = train(dataclasses.replace(cfg, policy=policy), progress=False)
    tuned = SmolVLAPolicy.from_pretrained(out / "checkpoints" / "last" / "pretrained_model")
    assert list(tuned.config.image_features) == ["observation.images.camera1", "observation.images.camera2"]
    assert tuned.config.state_feature.shape == (4,) and tuned.config.action_feature.shape == (3,)


def test_nan_loss_stops_with_step_and_episodes(dataset, tmp_path):
    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at step \d+; the batch holds episodes \["):
        run(
            dataset,
            tmp_path / "nan",
            "--steps=6",
            "--policy.optimizer_lr=1e30",
            "--policy.optimizer_grad_clip_norm=1e30",
        )


@pytest.mark.parametrize(
    "argv,match",
    [
        (
            ["--dataset.repo_id=x", "--policy.preset=micro", "--stepz=3"],
            r"unknown flag --stepz \(did you mean --steps\?\)",
        ),
        (
            ["--dataset.repo_id=x", "--policy.preset=micro", "--policy.chunk_sise=3"],
            "unknown flag --policy.chunk_sise",
        ),
        (["--dataset.repo_id=x", "--policy.preset=micro", "--batch_size=0"], "--batch_size: got 0"),
        (["--dataset.repo_id=x"], "give exactly one of --policy.path"),
        (["--policy.preset=micro"], "--dataset.repo_id is required"),
        (["--dataset.repo_id=x", "--policy.preset=micro", "--env.type=libero"], "--env.type: got 'libero'"),
        (["--dataset.repo_id=x", "--policy.type=act"], "--policy.type: got 'act'"),
        (
            ["--dataset.repo_id=x", "--policy.preset=micro", "--dataset.augment_crop_scale=0"],
            r"--dataset.augment_crop_scale: got 0.0, expected a number in \(0, 1\]",
        ),
        (
            ["--dataset.repo_id=x", "--policy.preset=micro", "--dataset.augment_max_shift=1.5"],
            "dataset.augment_max_shift",
        ),
    ],
)
def test_bad_flags(argv, match):
    with pytest.raises(SmolVLAError, match=match):
        parse_args(argv)


def test_config_file_and_flags(tmp_path):
    cfg = parse_args(
        [
            "--dataset.repo_id=data",
            "--policy.type=smolvla",
            "--policy.preset=tiny",
            "--steps=7",
            "--policy.n_action_steps=4",
            "--dataset.episodes=[0,2]",
            '--rename_map={"a": "b"}',
        ]
    )
    assert cfg.policy.preset == "tiny" and cfg.steps == 7 and cfg.dataset.episodes == (0, 2)
    assert cfg.rename_map == {"a": "b"} and cfg.policy.overrides == {"n_action_steps": "4"}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(cfg.to_dict()))
    again = parse_args([f"--config_path={path}", "--steps=9"])
    assert again == dataclasses.replace(cfg, steps=9)


def test_augmentation_flags_reach_the_augmenter():
    cfg = parse_args(
        [
            "--dataset.repo_id=x",
            "--policy.preset=micro",
            "--dataset.augment=true",
            "--dataset.augment_max_shift=1",
            "--dataset.augment_crop_scale=1",
        ]
    )
    aug = cfg.dataset.augment_config()
    assert (aug.enabled, aug.max_shift, aug.crop_scale) == (True, 1, 1.0)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # saved with checkpoints


def test_refuses_instructions_that_truncate_into_the_same_tokens(dataset, tmp_path):
    # the dataset's tasks are "task 0" and "task 1": 5 byte tokens leave "task " for both
    with pytest.raises(TrainingError, match=r"pass --policy.tokenizer_max_length=6 \(or more\)"):
        run(dataset, tmp_path / "run", "--steps=1", "--policy.tokenizer_max_length=5")


def test_bf16_fine_tuning_under_ddp_keeps_the_frozen_weights_exactly(dataset, tmp_path):
    """A bf16 checkpoint (as smolvla_base) fine-tuned with bf16 autocast by 2 processes: the frozen parts
    are stored in bf16 during training (mixed dtypes under DDP) and come out bit-identical."""
    from smolvla.apps.bench import write_checkpoint

    write_checkpoint("micro", None, tmp_path / "base", processors=False)  # the dataset's stats are used
    out = tmp_path / "ft"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29518"]
    cmd += ["-m", "smolvla.apps.cli", "train", f"--dataset.repo_id={dataset}", f"--output_dir={out}"]
    cmd += [f"--policy.path={tmp_path / 'base'}", "--policy.empty_cameras=1", "--precision=bf16"]
    cmd += ["--batch_size=2", "--steps=2", "--save_freq=100", "--num_workers=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = load_file(tmp_path / "base" / "model.safetensors")
    after = weights(out)
    frozen = [k for k in before if ".vlm." in k]
    trained = [k for k in before if ".lm_expert." in k]
    assert frozen and trained
    assert all(after[k].dtype == before[k].dtype and torch.equal(after[k], before[k]) for k in frozen)
    assert any(not torch.equal(after[k], before[k]) for k in trained)


def test_evaluation_runs_on_its_own_schedule(tmp_path, monkeypatch):
    """--eval_freq=2 with the default --save_freq evaluates at steps 2 and 4, checkpoints only at the end."""
    pytest.importorskip("metaworld")
    monkeypatch.setenv("MUJOCO_GL", "egl")  # the simulator workers render headless
    monkeypatch.setattr(synth, "ACTION_DIM", 4)  # Meta-World's action
    root = tmp_path / "ds"
    synth.write(root, [12, 10], synth.features(size=32, cams=("camera1",)))
    out = run(
        root,
        tmp_path / "run",
        "--steps=4",
        "--eval_freq=2",
        "--log_freq=1",
        "--env.type=metaworld",
        "--env.task=reach-v3",
        "--eval.n_episodes=1",
        "--eval.workers=1",
        "--env.max_episode_steps=5",
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_success" in r] == [2, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["000004", "last"]
    report = json.loads((out / "eval" / "000002" / "eval_report.json").read_text())
    assert report["config"]["max_episode_steps"] == 5 and report["config"]["n_episodes"] == 1
    assert not (out / "eval" / "000002" / "pretrained_model").exists()  # fed the simulator, then removed
