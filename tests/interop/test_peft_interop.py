"""LoRA adapters both ways between smolvla and LeRobot 0.6.1 + PEFT (`lerobot_peft_side.py`).

Ours -> LeRobot: an adapter smolvla saves loads through LeRobot's make_policy path (base policy, then
PeftModel.from_pretrained) and gives our actions. LeRobot -> ours: an adapter LeRobot makes
(wrap_with_peft with its SmolVLA defaults and a module trained in full) and saves as its training does
loads in smolvla, merged or not, and gives LeRobot's actions. Needs SMOLVLA_LEROBOT_PYTHON with `peft`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from smolvla.config import preset
from smolvla.model.lora import LoraSpec, lora_layers
from smolvla.policy import SmolVLAPolicy
from smolvla.processing.pipeline import make_pre_post_processors
from tests.interop.test_lerobot_interop import (
    ACTION_TOL,
    STATS,
    make_backbone_dir,
    make_inputs,
    maxdiff,
    write_checkpoint,
    write_inputs,
)

SIDE = Path(__file__).with_name("lerobot_peft_side.py")


@pytest.fixture(scope="module")
def peft_python(lerobot_python: str) -> str:
    """LeRobot's interpreter, with PEFT (LeRobot's `peft` extra) beside it."""
    probe = subprocess.run([lerobot_python, "-c", "import peft"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(
            f"{lerobot_python} has no peft: pip install 'lerobot[peft]==0.6.1' (peft>=0.18,<1.0) there"
        )
    return lerobot_python


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Any]:
    """A perturbed micro base checkpoint with processors, and the inputs both sides run."""
    root = tmp_path_factory.mktemp("peft")
    backbone = make_backbone_dir(root / "backbone")
    cfg = preset("micro").override(vlm_model_name=str(backbone))
    base = root / "base"
    write_checkpoint(base, cfg)
    observations, noises = make_inputs(cfg, seed=2)
    write_inputs(root / "inputs", observations, noises)
    return {"root": root, "base": base, "observations": observations, "noises": noises}


def our_actions(policy: SmolVLAPolicy, folder: Path, setup: dict[str, Any]) -> dict[str, torch.Tensor]:
    pre, post = make_pre_post_processors(policy.config, pretrained_path=folder)
    out = {}
    for c, obs in setup["observations"].items():
        batch = pre({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in obs.items()})
        normalized = policy.predict_action_chunk(batch, noise=setup["noises"][c])
        out[f"{c}/actions_normalized"] = normalized
        out[f"{c}/actions"] = post(normalized)
    return out


def side(python: str, *args: Path | str, io: Path) -> dict[str, Any]:
    for name in ("inputs.json", "inputs.safetensors"):
        (io / name).write_bytes((io.parent / "inputs" / name).read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(io / "hf_home"))
    # LeRobot resolves the bundled backbone ("vlm") against the current directory: the base's
    proc = subprocess.run(
        [python, str(SIDE), *map(str, args)],
        cwd=io.parent / "base",
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        pytest.fail(f"LeRobot's side failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
    return json.loads((io / "report.json").read_text())


def assert_same(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    """Our actions against LeRobot's, per case (its file also holds the preprocessed inputs)."""
    assert sorted(ours) == sorted(k for k in theirs if k.rsplit("/", 1)[1].startswith("actions"))
    a = STATS["action"]
    scale = max(*a["std"], max(a["max"]) - min(a["min"]))
    for key in ours:
        tol = ACTION_TOL * (1 if key.endswith("normalized") else scale)
        d = maxdiff(ours[key], theirs[key])
        assert d <= tol, f"{key}: max abs difference {d:.3g} > {tol:.3g}"


def test_lerobot_loads_our_adapter_and_gives_our_actions(setup, peft_python):
    policy = SmolVLAPolicy.from_pretrained(setup["base"])
    spec = LoraSpec(r=4, lora_alpha=16, modules_to_save=("action_time_mlp_out",), init_lora_weights=False)
    wrapped = policy.add_adapter(spec, base=str(setup["base"]))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # the trained-in-full module moves too
        for p in policy.model.action_time_mlp_out.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    adapter = setup["root"] / "ours_adapter"
    policy.eval().save_pretrained(adapter)
    pre, post = make_pre_post_processors(policy.config, pretrained_path=setup["base"])
    pre.save(adapter)
    post.save(adapter)
    ours = our_actions(policy, adapter, setup)
    base_actions = our_actions(SmolVLAPolicy.from_pretrained(setup["base"]), setup["base"], setup)
    assert maxdiff(ours["single/actions"], base_actions["single/actions"]) > 1e-2  # the adapter matters

    io = setup["root"] / "to_lerobot"
    io.mkdir()
    report = side(peft_python, "load", adapter, io, io=io)
    assert report["use_peft"] is True and report["base"] == str(setup["base"])
    assert report["warnings"] == [], report["warnings"]
    assert report["lora_modules"] == sorted(wrapped)
    assert_same(ours, load_file(str(io / "outputs.safetensors")))


def test_we_load_lerobots_adapter_and_give_its_actions(setup, peft_python):
    adapter = setup["root"] / "lerobot_adapter"
    io = setup["root"] / "from_lerobot"
    io.mkdir()
    report = side(peft_python, "make", setup["base"], adapter, io, io=io)
    assert any(".lora_A." in n for n in report["trainable"])
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "model.safetensors").exists()
    theirs = load_file(str(io / "outputs.safetensors"))

    kept = SmolVLAPolicy.from_pretrained(adapter, merge_adapter=False)
    assert kept.adapter is not None and kept.adapter.modules_to_save == ("state_proj",)
    assert "model.state_proj" not in lora_layers(kept) and "model.action_out_proj" in lora_layers(kept)
    assert_same(our_actions(kept, adapter, setup), theirs)
    merged = SmolVLAPolicy.from_pretrained(adapter)
    assert not lora_layers(merged)
    assert_same(our_actions(merged, adapter, setup), theirs)
    # and every inference mode takes it (int8 and bf16 within their own error of fp32)
    fp32 = our_actions(SmolVLAPolicy.from_pretrained(adapter, inference_mode="fp32"), adapter, setup)
    assert_same(fp32, theirs)
