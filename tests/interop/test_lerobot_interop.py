"""Ours -> LeRobot: a checkpoint written by smolvla loads into LeRobot 0.6.1 and gives the same outputs.

The test builds a small policy with random weights on a backbone folder it makes (config.json from our
`BackboneConfig.to_hf_dict()`, tokenizer/processor files from ../shared/parity/ckpt/vlm, the files a
LeRobot run accepted), perturbs every tensor, and saves it with our own `save_pretrained` and our
processors' `save`. `lerobot_side.py` then runs under LeRobot's interpreter, in a subprocess: it loads
those files with LeRobot's own API, reports missing/unexpected keys and tensors that differ from the file,
re-saves what it loaded, and runs raw observations through LeRobot's preprocessor, policy (with a fixed
noise) and postprocessor. Our side runs the same observations through our policy and processors.
Everything crosses the process boundary as JSON and safetensors.

LeRobot is never a dependency of ours: set SMOLVLA_LEROBOT_PYTHON to the python of an environment with
`lerobot[smolvla]==0.6.1` (e.g. built by ../shared/tools/lerobot_reference/make_lerobot_env.sh) to run
it; without it the test is skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from smolvla.config import KNOWN_BACKBONES, MICRO_BACKBONE, SmolVLAConfig, preset
from smolvla.policy import SmolVLAPolicy
from smolvla.processing.pipeline import (
    POSTPROCESSOR_FILE,
    POSTPROCESSOR_STATE_FILE,
    PREPROCESSOR_FILE,
    PREPROCESSOR_STATE_FILE,
    make_pre_post_processors,
)
from tests.conftest import require_shared

LEROBOT_PYTHON_ENV = "SMOLVLA_LEROBOT_PYTHON"
LEROBOT_SIDE = Path(__file__).with_name("lerobot_side.py")
TIMEOUT_S = 900

ACTION_TOL = 2e-4  # fp32, as in ../shared/parity/README.md
STATE_TOL = 1e-6

# The micro preset as it is, a variant that exercises other code paths (image delimiter tokens read from
# the backbone's tokenizer, cross-attention in every expert layer, padding to max_length, min/max action
# normalization), and one with images smaller than the vision tower's.
VARIANTS: dict[str, dict[str, Any]] = {
    "micro": {},
    "micro-variant": {
        "add_image_special_tokens": True,
        "self_attn_every_n_layers": 0,
        "pad_language_to": "max_length",
        "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MIN_MAX"},
    },
    # Images smaller than the vision tower's size (as a policy fine-tuned at 384 px on the 512 px tower):
    # a 2 x 2 patch grid whose position ids are bucketed onto the 4 x 4 table, one token per camera.
    "micro-small-images": {"resize_imgs_with_padding": (8, 8)},
}

# Dataset statistics (state width 3, action width 2 in the micro preset): far from 0/1 on purpose.
STATS = {
    "observation.state": {
        "mean": [0.25, -1.5, 3.0],
        "std": [0.5, 2.0, 1.25],
        "min": [-0.75, -6.0, 0.5],
        "max": [1.25, 2.5, 5.5],
    },
    "action": {
        "mean": [1.0, -0.5],
        "std": [3.0, 0.25],
        "min": [-5.0, -1.0],
        "max": [7.0, 0.0],
    },
}

# The tasks: one longer than tokenizer_max_length (12 in micro: truncated, on the side that the
# tokenizer_config.json names) and one shorter (padded) in a batch of two; then one unbatched observation.
CASES = [
    {"name": "batch2", "batch": 2, "task": ["pick up the red cube and put it in the bin", "go"]},
    {"name": "single", "batch": None, "task": "stack it"},
]


def make_backbone_dir(path: Path) -> Path:
    """A SmolVLM backbone folder for the micro backbone that transformers (so LeRobot) can build:
    config.json from our BackboneConfig, tokenizer and processor files from the LeRobot-made fixture."""
    src = require_shared("parity") / "ckpt" / "vlm"
    path.mkdir(parents=True)
    for f in src.glob("*.json"):
        if f.name != "config.json":
            shutil.copyfile(f, path / f.name)
    ids = {t["content"]: t["id"] for t in json.loads((src / "tokenizer.json").read_text())["added_tokens"]}
    backbone = dataclasses.replace(
        KNOWN_BACKBONES[MICRO_BACKBONE],
        image_token_id=ids["<image>"],
        global_image_token_id=ids["<global-img>"],
        fake_image_token_id=ids["<fake_token_around_image>"],
    )
    (path / "config.json").write_text(json.dumps(backbone.to_hf_dict(), indent=2) + "\n")
    # The processor's image sequence length, to match the micro tower (SmolVLA itself does not read it:
    # its images go through resize_with_pad and the vision tower, not through the SmolVLM processor).
    proc = json.loads((path / "processor_config.json").read_text())
    proc["image_seq_len"] = backbone.tokens_per_image
    (path / "processor_config.json").write_text(json.dumps(proc, indent=2) + "\n")
    return path


def perturb_(policy: SmolVLAPolicy, seed: int) -> None:
    """Moves every tensor away from its init (norm weights 1, biases 0) so that each one matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in policy.state_dict().values():
            t.add_(torch.randn(t.shape, generator=g) * 0.1)


def make_inputs(cfg: SmolVLAConfig, seed: int) -> tuple[dict[str, dict[str, Any]], dict[str, torch.Tensor]]:
    """Raw observations per case (float CHW images in [0, 1], raw state, task) and their noises."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor(STATS["observation.state"]["mean"])
    std = torch.tensor(STATS["observation.state"]["std"])
    observations, noises = {}, {}
    for case in CASES:
        b = case["batch"]
        lead = () if b is None else (b,)
        obs: dict[str, Any] = {
            key: torch.rand(*lead, *feat.shape, generator=g) for key, feat in cfg.image_features.items()
        }
        obs["observation.state"] = mean + std * torch.randn(*lead, *cfg.state_feature.shape, generator=g)
        obs["task"] = case["task"]
        observations[case["name"]] = obs
        noises[case["name"]] = torch.randn(b or 1, cfg.chunk_size, cfg.max_action_dim, generator=g)
    return observations, noises


def run_lerobot(python: str, ckpt: Path, io: Path, home: Path) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HOME=str(home / "hf_home"),  # an empty cache: nothing can come from a previous download
        HF_LEROBOT_HOME=str(home / "lerobot_home"),
    )
    proc = subprocess.run(
        [python, str(LEROBOT_SIDE), str(ckpt), str(io)],
        cwd=ckpt,  # LeRobot resolves a relative vlm_model_name ("vlm") against the current directory
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"LeRobot could not load or run our checkpoint {ckpt} (exit {proc.returncode}):\n"
            f"--- stderr (tail) ---\n{proc.stderr[-6000:]}\n--- stdout (tail) ---\n{proc.stdout[-2000:]}"
        )
    return json.loads((io / "report.json").read_text())


def write_checkpoint(folder: Path, cfg: SmolVLAConfig) -> tuple[SmolVLAPolicy, Any, Any]:
    """A perturbed policy of `cfg` (seed 0) with processors of STATS, saved in `folder`."""
    torch.manual_seed(0)
    policy = SmolVLAPolicy.from_config(cfg).eval()
    perturb_(policy, seed=1)
    pre, post = make_pre_post_processors(cfg, dataset_stats=STATS)
    policy.save_pretrained(folder)
    pre.save(folder)
    post.save(folder)
    return policy, pre, post


def write_inputs(io: Path, observations: dict[str, dict[str, Any]], noises: dict[str, torch.Tensor]) -> None:
    """The cases as LeRobot's side reads them: io/inputs.safetensors (tensors, noise) and inputs.json."""
    io.mkdir(parents=True)
    tensors = {f"{c}/noise": n for c, n in noises.items()}
    spec = []
    for c, obs in observations.items():
        keys = [k for k, v in obs.items() if isinstance(v, torch.Tensor)]
        tensors.update({f"{c}/{k}": obs[k] for k in keys})
        spec.append({"name": c, "task": obs["task"], "tensor_keys": keys})
    save_file(tensors, str(io / "inputs.safetensors"))
    (io / "inputs.json").write_text(json.dumps({"cases": spec}, indent=2))


def build(root: Path, variant: str) -> dict[str, Any]:
    """Our checkpoint (policy + processor files) in `root/checkpoint`, the inputs for LeRobot in `root/io`,
    and our own outputs on those inputs (from the in-memory policy and processors that were saved)."""
    backbone = make_backbone_dir(root / "backbone")
    cfg = preset("micro").override(vlm_model_name=str(backbone), **VARIANTS[variant])

    ckpt = root / "checkpoint"
    policy, pre, post = write_checkpoint(ckpt, cfg)
    observations, noises = make_inputs(cfg, seed=2)
    io = root / "io"
    write_inputs(io, observations, noises)

    ours: dict[str, torch.Tensor] = {}
    for c, obs in observations.items():
        batch = pre({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in obs.items()})
        normalized = policy.predict_action_chunk(batch, noise=noises[c])
        for key in (
            "observation.language.tokens",
            "observation.language.attention_mask",
            "observation.state",
        ):
            ours[f"{c}/{key}"] = batch[key]
        for key in cfg.image_features:
            ours[f"{c}/{key}"] = batch[key]
        ours[f"{c}/actions_normalized"] = normalized
        ours[f"{c}/actions"] = post(normalized)
    return {"cfg": cfg, "root": root, "backbone": backbone, "ckpt": ckpt, "io": io, "ours": ours}


@pytest.fixture(scope="module", params=list(VARIANTS))
def exchange(request, tmp_path_factory, lerobot_python):
    ex = build(tmp_path_factory.mktemp(f"interop-{request.param}"), request.param)
    ex["report"] = run_lerobot(lerobot_python, ex["ckpt"], ex["io"], ex["root"])
    ex["theirs"] = load_file(str(ex["io"] / "outputs.safetensors"))
    return ex


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert tuple(a.shape) == tuple(b.shape), (tuple(a.shape), tuple(b.shape))
    return (a.double() - b.double()).abs().max().item()


def _case_keys(ex: dict[str, Any], suffix: str) -> list[str]:
    keys = [k for k in ex["ours"] if k.endswith("/" + suffix)]
    assert keys, suffix
    return keys


# -- loading -------------------------------------------------------------------------------------------


def test_lerobot_loads_every_tensor(exchange):
    r = exchange["report"]
    assert r["versions"]["lerobot"] == "0.6.1", r["versions"]
    assert r["missing_keys"] == [], f"LeRobot's model has tensors our file lacks: {r['missing_keys']}"
    assert r["unexpected_keys"] == [], f"our file has tensors LeRobot's model lacks: {r['unexpected_keys']}"
    assert r["mismatched_tensors"] == [], r["mismatched_tensors"]
    key_warnings = [m for m in r["load_warnings"] if "key(s) when loading" in m]
    assert key_warnings == [], key_warnings
    assert r["n_tensors"]["file"] == r["n_tensors"]["model"]
    assert r["network_attempts"] == [], r["network_attempts"]


def test_lerobot_builds_our_processor_pipelines(exchange):
    r = exchange["report"]
    assert r["pre_steps"] == [
        "RenameObservationsProcessorStep",
        "AddBatchDimensionProcessorStep",
        "NewLineTaskProcessorStep",
        "TokenizerProcessorStep",
        "DeviceProcessorStep",
        "NormalizerProcessorStep",
    ]
    assert r["post_steps"] == ["UnnormalizerProcessorStep", "DeviceProcessorStep"]
    assert r["processor_warnings"] == [], r["processor_warnings"]


def test_lerobot_keeps_every_config_field(exchange):
    """LeRobot's config, re-saved after loading ours, says what ours says (LeRobot resolves a null device
    to the one it runs on)."""
    ours = json.loads((exchange["ckpt"] / "config.json").read_text())
    theirs = json.loads((exchange["io"] / "resaved" / "config.json").read_text())
    assert sorted(theirs) == sorted(ours)
    differ = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    if ours["device"] is None:
        differ.pop("device", None)
    assert differ == {}, f"fields that LeRobot read differently (ours, LeRobot's): {differ}"


@pytest.mark.parametrize(
    ("config_file", "state_file"),
    [(PREPROCESSOR_FILE, PREPROCESSOR_STATE_FILE), (POSTPROCESSOR_FILE, POSTPROCESSOR_STATE_FILE)],
)
def test_lerobot_resaves_our_processor_files_unchanged(exchange, config_file, state_file):
    ckpt, resaved = exchange["ckpt"], exchange["io"] / "resaved"
    assert json.loads((resaved / config_file).read_text()) == json.loads((ckpt / config_file).read_text())
    ours, theirs = load_file(str(ckpt / state_file)), load_file(str(resaved / state_file))
    assert sorted(theirs) == sorted(ours)
    for k in ours:
        assert theirs[k].dtype == ours[k].dtype and torch.equal(theirs[k], ours[k]), k


# -- outputs -------------------------------------------------------------------------------------------


def test_tokens_equal(exchange):
    for suffix in ("observation.language.tokens", "observation.language.attention_mask"):
        for key in _case_keys(exchange, suffix):
            ours, theirs = exchange["ours"][key], exchange["theirs"][key]
            assert ours.dtype == theirs.dtype, (key, ours.dtype, theirs.dtype)
            assert torch.equal(ours, theirs), f"{key}:\n ours    {ours.tolist()}\n LeRobot {theirs.tolist()}"


def test_images_pass_through_equal(exchange):
    for feature in exchange["cfg"].image_features:
        for key in _case_keys(exchange, feature):
            assert torch.equal(exchange["ours"][key], exchange["theirs"][key]), key


def test_normalized_state(exchange):
    for key in _case_keys(exchange, "observation.state"):
        d = maxdiff(exchange["ours"][key], exchange["theirs"][key])
        assert d <= STATE_TOL, f"{key}: max abs difference {d:.3g} > {STATE_TOL}"


def _assert_actions_match(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    for key in _case_keys({"ours": ours}, "actions_normalized"):
        d = maxdiff(ours[key], theirs[key])
        assert d <= ACTION_TOL, f"{key}: max abs difference {d:.3g} > {ACTION_TOL}"
    # Unnormalized actions: the tolerance scales with the largest spread of the action stats.
    a = STATS["action"]
    tol = ACTION_TOL * max(*a["std"], max(a["max"]) - min(a["min"]))
    for key in _case_keys({"ours": ours}, "actions"):
        d = maxdiff(ours[key], theirs[key])
        assert d <= tol, f"{key}: max abs difference {d:.3g} > {tol:.3g}"


def test_actions(exchange):
    _assert_actions_match(exchange["ours"], exchange["theirs"])


# -- a self-contained checkpoint -----------------------------------------------------------------------


def test_checkpoint_loads_without_the_original_backbone_folder(tmp_path, lerobot_python):
    """README: a backbone that is not known by name is written beside the checkpoint (`vlm/`) 'so the
    folder is self-contained'. Delete the folder the policy was built from and move the checkpoint: LeRobot
    must still load the policy and its processors and give the same outputs."""
    ex = build(tmp_path / "built", "micro")
    shutil.rmtree(ex["backbone"])
    ckpt = shutil.move(ex["ckpt"], tmp_path / "moved")
    report = run_lerobot(lerobot_python, Path(ckpt), ex["io"], tmp_path)
    assert report["missing_keys"] == report["unexpected_keys"] == report["mismatched_tensors"] == []
    theirs = load_file(str(ex["io"] / "outputs.safetensors"))
    for key in _case_keys(ex, "observation.language.tokens"):
        assert torch.equal(ex["ours"][key], theirs[key]), key
    _assert_actions_match(ex["ours"], theirs)
