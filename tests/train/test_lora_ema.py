"""LoRA fine-tuning (`--peft.*`) and the weight EMA (`--ema.*`): files, exact resume, the EMA's math,
what evaluation reads, bad flags. LeRobot reading these adapters is tests/interop/test_peft_interop.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smolvla.errors import SmolVLAError
from smolvla.model.lora import DEFAULT_TARGETS, lora_layers
from smolvla.policy import SmolVLAPolicy
from smolvla.train import train
from smolvla.train.config import EMAConfig
from tests.data import synth
from tests.train.test_train import parse_args, run


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds") / "tiny"
    synth.write(root, [12, 9, 11], synth.features(size=16, cams=("camera1",)))
    return root


@pytest.fixture(scope="module")
def base(dataset, tmp_path_factory) -> Path:
    """A trained micro checkpoint to adapt (LoRA adapts a checkpoint, never a new policy)."""
    out = run(dataset, tmp_path_factory.mktemp("base") / "run", "--steps=2", "--save_freq=100")
    return out / "checkpoints" / "last" / "pretrained_model"


def lora_run(dataset: Path, base: Path, out: Path, *extra: str, stop_at: int | None = None) -> Path:
    argv = [f"--dataset.repo_id={dataset}", f"--output_dir={out}", f"--policy.path={base}"]
    argv += ["--batch_size=4", "--num_workers=0", "--seed=3", "--precision=fp32", "--save_freq=100"]
    return train(parse_args([*argv, *extra]), progress=False, stop_at=stop_at)


def ckpt(out: Path, step: int | str = "last") -> Path:
    return out / "checkpoints" / (f"{step:06d}" if isinstance(step, int) else step)


def test_lora_fine_tune_saves_peft_files_and_trains_only_the_adapters(dataset, base, tmp_path):
    out = lora_run(dataset, base, tmp_path / "ft", "--steps=3", "--peft.r=4", "--peft.lora_alpha=8")
    model = ckpt(out) / "pretrained_model"
    names = {p.name for p in model.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json", "train_config.json"} <= names
    assert {"policy_preprocessor.json", "policy_postprocessor.json"} <= names
    assert "model.safetensors" not in names
    assert json.loads((model / "config.json").read_text())["use_peft"] is True
    acfg = json.loads((model / "adapter_config.json").read_text())
    assert acfg["peft_type"] == "LORA" and acfg["r"] == 4 and acfg["lora_alpha"] == 8
    assert acfg["base_model_name_or_path"] == str(base.resolve())
    assert acfg["target_modules"] == DEFAULT_TARGETS
    keys = load_file(model / "adapter_model.safetensors")
    # LeRobot's default targets: the expert's q/v in both micro expert layers + the five projections
    layers = {k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in keys}
    assert len(layers) == 2 * 2 + 5 and "model.state_proj" in layers
    assert all(k.startswith("base_model.model.") for k in keys)
    assert keys["base_model.model.model.state_proj.lora_A.weight"].shape[0] == 4

    tuned = SmolVLAPolicy.from_pretrained(model)  # merged
    plain = SmolVLAPolicy.from_pretrained(base)
    assert not lora_layers(tuned)
    t, p = tuned.state_dict(), plain.state_dict()
    changed = {k for k in t if not torch.equal(t[k], p[k])}
    assert changed == {f"{name}.weight" for name in layers}, sorted(changed)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert recs and all("ema_decay" not in r for r in recs)


def test_lora_resume_is_exact(dataset, base, tmp_path):
    extra = (
        "--steps=5",
        "--peft.r=2",
        "--peft.init_type=gaussian",
        "--peft.full_training_modules=[state_proj]",
    )
    straight = lora_run(dataset, base, tmp_path / "a", *extra)
    stopped = lora_run(dataset, base, tmp_path / "b", *extra, stop_at=2)
    train(parse_args([f"--output_dir={stopped}", "--resume=true"]), progress=False)
    a = load_file(ckpt(straight, 5) / "pretrained_model" / "adapter_model.safetensors")
    b = load_file(ckpt(stopped, 5) / "pretrained_model" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a module trained in full is saved whole, under its own name, and is not also adapted
    assert "base_model.model.model.state_proj.weight" in a
    assert not any(k.startswith("base_model.model.model.state_proj.lora_") for k in a)


def test_ema_schedule_matches_lerobot():
    """diffusers' EMAModel as LeRobot builds it: a copy first, then 1 - (1 + t) ** -0.75, capped."""
    cfg = EMAConfig(enable=True)
    assert [cfg.decay_at(s) for s in (1, 2)] == [0.0, 1 - 2**-0.75]
    assert cfg.decay_at(10**9) == 0.9999
    const = EMAConfig(enable=True, decay=0.9, update_after_step=2)
    assert [const.decay_at(s) for s in (1, 2, 3, 4)] == [0.0, 0.0, 0.0, 0.9]


def test_ema_is_saved_evaluated_and_resumed_bit_exactly(dataset, tmp_path, monkeypatch):
    evaluated = []
    monkeypatch.setattr(
        "smolvla.train.loop._evaluate", lambda cfg, path, out: evaluated.append(path) or {"eval_success": 0.0}
    )
    flags = ("--steps=5", "--save_freq=1", "--ema.enable=true", "--env.type=metaworld", "--env.task=reach-v3")
    straight = run(dataset, tmp_path / "a", *flags, "--eval_freq=5")
    last = ckpt(straight, 5)
    assert evaluated == [last / "pretrained_model_ema"]
    for name in ("config.json", "model.safetensors", "policy_preprocessor.json", "train_config.json"):
        assert (last / "pretrained_model_ema" / name).is_file(), name
    meta = json.loads((last / "training_state" / "ema_state.json").read_text())
    assert meta["step"] == 5 and meta["decay"] == EMAConfig().decay_at(5)

    # The average after step 2 is d * w1 + (1 - d) * w2 of the trained weights (a copy after step 1).
    w = {s: load_file(ckpt(straight, s) / "pretrained_model" / "model.safetensors") for s in (1, 2)}
    e1 = load_file(ckpt(straight, 1) / "pretrained_model_ema" / "model.safetensors")
    e2 = load_file(ckpt(straight, 2) / "pretrained_model_ema" / "model.safetensors")
    d = EMAConfig().decay_at(2)
    trained = [k for k in w[1] if not torch.equal(w[1][k], w[2][k])]
    assert trained
    for k in w[1]:
        assert torch.equal(e1[k], w[1][k]), k
        torch.testing.assert_close(e2[k], d * w[1][k] + (1 - d) * w[2][k], rtol=0, atol=1e-6)

    stopped = run(dataset, tmp_path / "b", *flags, "--eval_freq=100", stop_at=3)
    train(parse_args([f"--output_dir={stopped}", "--resume=true"]), progress=False)
    for sub in ("pretrained_model_ema/model.safetensors", "training_state/ema_state.safetensors"):
        a, b = load_file(ckpt(straight, 5) / sub), load_file(ckpt(stopped, 5) / sub)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub


def test_ema_with_lora_averages_the_adapter(dataset, base, tmp_path):
    out = lora_run(dataset, base, tmp_path / "ft", "--steps=3", "--peft.r=2", "--ema.enable=true")
    ema = ckpt(out) / "pretrained_model_ema"
    assert (ema / "adapter_model.safetensors").is_file() and not (ema / "model.safetensors").exists()
    a = load_file(ckpt(out) / "pretrained_model" / "adapter_model.safetensors")
    e = load_file(ema / "adapter_model.safetensors")
    assert a.keys() == e.keys() and any(not torch.equal(a[k], e[k]) for k in a)
    SmolVLAPolicy.from_pretrained(ema)  # loads (base + averaged adapter)


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--peft.method_type=IA3"], r"--peft.method_type: got 'IA3', expected 'LORA'"),
        (["--peft.r=0"], r"--peft.r: got 0, expected a positive integer"),
        (["--peft.init_type=pissa"], r"--peft.init_type: got 'pissa'.*not implemented"),
        (["--peft.target_modules=nothing_here"], r"matches no linear layer"),
        (["--peft.target_modules=model\\.vlm_with_expert\\.lm_expert"], r"not linear layers"),
        (["--peft.full_training_modules=[nope]"], r"modules_to_save: \['nope'\] name no module"),
        (["--ema.decay=2"], r"--ema.decay: got 2.0, expected a number in \[0, 1\]"),
        (["--ema.decay=0.9", "--ema.max_decay=0.99"], r"exclude each other"),
    ],
)
def test_bad_flags_name_the_flag(dataset, base, tmp_path, extra, match):
    with pytest.raises(SmolVLAError, match=match):
        lora_run(dataset, base, tmp_path / "x", "--steps=1", *extra)


def test_lora_needs_a_checkpoint(dataset, tmp_path):
    with pytest.raises(
        SmolVLAError, match=r"--peft.\*: LoRA adapts a trained checkpoint; give --policy.path"
    ):
        run(dataset, tmp_path / "x", "--steps=1", "--peft.r=4")
