"""The ONNX export and its torch-free runtime: the same actions as the PyTorch policy, on both
backends, from the graphs a user's `smolvla export` writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from smolvla.policy import SmolVLAPolicy
from smolvla.processing import load_tokenizer, make_pre_post_processors, unit_stats
from smolvla.processing.pipeline import sample_observation
from smolvla.runtime.export import ExportError, check_export, export_policy
from smolvla.runtime.exported import EXPORT_FILE, ExportedPolicy, ExportedPolicyError
from smolvla.runtime.select import TorchPredictor
from tests.conftest import require_shared, save_checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


def observation(cfg, seed: int) -> dict:
    obs = sample_observation(cfg, seed)
    obs["task"] = ["open the drawer", "close the drawer", "push the red button"][seed % 3]
    return obs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny preset exported with every form this machine's packages allow (as a user runs it)."""
    ckpt = save_checkpoint("tiny", tmp_path_factory.mktemp("tiny_ckpt"))
    out = tmp_path_factory.mktemp("tiny_export") / "export"
    # The command a user runs, in its own process (as a user runs it)
    cmd = [sys.executable, "-m", "smolvla.apps.cli", "export", f"--policy.path={ckpt}", f"--output_dir={out}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return ckpt, out


@pytest.fixture(scope="module")
def tiny_torch(tiny) -> TorchPredictor:
    ckpt, _ = tiny
    policy = SmolVLAPolicy.from_pretrained(ckpt)
    pre, post = make_pre_post_processors(policy.config, pretrained_path=ckpt)
    return TorchPredictor(policy, pre, post)


def test_export_folder_holds_what_a_runtime_needs(tiny):
    _, out = tiny
    meta = json.loads((out / EXPORT_FILE).read_text())
    assert meta["opset"] == 18 and meta["batch_size"] == 1
    assert meta["cameras"] == {"observation.images.camera1": [3, 64, 64]}
    assert meta["chunk_size"] == 16 and meta["num_steps"] == 10 and meta["action_dim"] == 4
    assert meta["language"]["max_length"] == 24 and (out / "tokenizer" / "tokenizer.json").is_file()
    assert set(meta["graphs"]) >= {"fp32", "int8"}
    for forms in meta["graphs"].values():
        for f in forms.values():
            assert (out / f).is_file(), f
    assert meta["files"]["prefix.onnx.data"] > 1e6  # the weights are in the export, not referenced
    results = meta["check"]["results"]
    assert results["onnxruntime/fp32"]["max_abs"] <= 1e-4 and results["openvino/fp32"]["max_abs"] <= 1e-4
    for name in ("onnxruntime/int8", "openvino/int8"):  # reported, and an int8 error, not garbage
        assert 1e-6 < results[name]["mean_abs"] < 0.1, (name, results[name])


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_fp32_actions_equal_pytorchs(tiny, tiny_torch, backend):
    """Raw observations in, robot actions out, on observations the export never saw; same noise."""
    _, out = tiny
    runtime = ExportedPolicy(out, backend=backend, precision="fp32")
    for seed in (1, 2):
        obs = observation(tiny_torch.policy.config, seed)
        noise = runtime.noise(seed)
        ours = runtime.predict_normalized(obs, noise)
        ref = tiny_torch.predict_normalized(obs, noise)
        assert ref.shape == ours.shape == (16, 4)
        assert np.abs(ours - ref).max() <= 1e-4
        np.testing.assert_allclose(
            runtime.predict_chunk(obs, noise), tiny_torch.predict_chunk(obs, noise), atol=1e-4
        )
    # the dataset's action range travels with the export, for a robot client's joint limits
    assert runtime.action_range() == tiny_torch.action_range() == {"min": [-1.0] * 4, "max": [1.0] * 4}


def test_select_action_runs_a_chunk_then_pops_it(tiny, tiny_torch):
    _, out = tiny
    runtime = ExportedPolicy(out)
    obs = observation(tiny_torch.policy.config, 1)
    runtime.rng = np.random.default_rng(5)
    chunk = runtime.predict_chunk(obs)
    runtime.rng = np.random.default_rng(5)
    runtime.reset()
    actions = [runtime.select_action(obs) for _ in range(runtime.n_action_steps)]
    np.testing.assert_array_equal(np.stack(actions), chunk[: runtime.n_action_steps])


def test_parity_fixture_through_the_graphs(tmp_path):
    """LeRobot's own checkpoint, exported: the graphs give LeRobot's actions (its README's tolerance)
    and ours within 1e-4, from the same inputs and noise."""
    root = require_shared("parity")
    ref = load_file(root / "ref_outputs.safetensors")
    policy = SmolVLAPolicy.from_pretrained(root / "ckpt")
    cfg = policy.config
    tok = load_tokenizer(cfg.vlm_model_name, relative_to=root / "ckpt")
    pre, post = make_pre_post_processors(cfg, dataset_stats=unit_stats(cfg), tokenizer=tok)
    out = tmp_path / "export"
    export_policy(policy, pre, post, out, int8=False, log=lambda _: None)
    runtime = ExportedPolicy(out)
    cams = list(runtime.cameras)
    batch = {k[3:]: v for k, v in ref.items() if k.startswith("in.observation")}
    for i in range(2):
        tokens = batch["observation.language.tokens"][i : i + 1].numpy()
        mask = batch["observation.language.attention_mask"][i : i + 1].numpy()
        pad = runtime.max_length - tokens.shape[1]
        feeds = {
            "tokens": np.pad(tokens, ((0, 0), (0, pad)), constant_values=2),
            "token_mask": np.pad(mask, ((0, 0), (0, pad))),
            "state": batch["observation.state"][i : i + 1].numpy(),
            **{f"image_{j}": batch[k][i : i + 1].numpy() for j, k in enumerate(cams)},
        }
        cache = runtime.prefill(feeds)
        x = runtime.sample(cache, ref["in.infer_noise"][i : i + 1].numpy(), 10)
        lerobot = ref["out.actions"][i].numpy()
        assert np.abs(x[0, :, :6] - lerobot).max() <= 2e-4
        with torch.no_grad():
            sub = {k: v[i : i + 1] for k, v in batch.items()}
            ours = policy.predict_action_chunk(sub, ref["in.infer_noise"][i : i + 1])[0].numpy()
        assert np.abs(x[0, :, :6] - ours).max() <= 1e-4


def test_runtime_imports_no_torch(tiny):
    """A robot's computer runs the export with numpy, tokenizers and the backend only."""
    _, out = tiny
    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
import numpy as np
from smolvla.runtime.exported import ExportedPolicy
p = ExportedPolicy({str(out)!r}, backend="onnxruntime")
obs = {{"observation.images.camera1": np.zeros((64, 64, 3), np.uint8),
       "observation.state": np.zeros(4, np.float32), "task": "open the drawer"}}
print(p.predict_chunk(obs).shape)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(16, 4)"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda o: o.pop("observation.images.camera1"), r"observation\.images\.camera1: missing"),
        (
            lambda o: o.update({"observation.images.camera1": np.zeros((48, 64, 3), np.uint8)}),
            r"camera1: got shape \(3, 48, 64\), expected \[64, 64, 3\]",
        ),
        (
            lambda o: o.update({"observation.images.camera1": np.full((64, 64, 3), 255.0, np.float32)}),
            r"values in \[255, 255\], expected \[0, 1\]",
        ),
        (lambda o: o.update({"observation.state": np.zeros(5)}), r"observation\.state: .*expected 4 numbers"),
        (lambda o: o.update({"observation.state": np.full(4, np.nan)}), r"observation\.state: contains NaN"),
        (lambda o: o.update({"task": 3}), r"task: got 3, expected the instruction as a string"),
    ],
)
def test_bad_observations_are_named(tiny, tiny_torch, change, message):
    _, out = tiny
    runtime = ExportedPolicy(out)
    obs = observation(tiny_torch.policy.config, 0)
    change(obs)
    with pytest.raises(ExportedPolicyError, match=message):
        runtime.predict_chunk(obs)


def test_bad_choices_are_named(tiny, tmp_path):
    _, out = tiny
    with pytest.raises(ExportedPolicyError, match=r"backend: got 'tensorflow', expected one of"):
        ExportedPolicy(out, backend="tensorflow")
    with pytest.raises(ExportedPolicyError, match=r"precision: onnxruntime 'bf16' is not available"):
        ExportedPolicy(out, backend="onnxruntime", precision="bf16")
    with pytest.raises(
        ExportedPolicyError, match=r"device: 'cuda' needs ONNX Runtime's CUDAExecutionProvider"
    ):
        ExportedPolicy(out, backend="onnxruntime", device="cuda")
    with pytest.raises(ExportedPolicyError, match=r"noise: got shape \(2, 3\)"):
        ExportedPolicy(out).predict_chunk(
            observation(__import__("smolvla").preset("tiny"), 0), np.zeros((2, 3))
        )
    meta = json.loads((out / EXPORT_FILE).read_text())
    (tmp_path / EXPORT_FILE).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ExportedPolicyError, match=r"version 99, expected 'smolvla-onnx' version 1"):
        ExportedPolicy(tmp_path)
    (tmp_path / EXPORT_FILE).write_text(json.dumps({k: v for k, v in meta.items() if k != "graphs"}))
    with pytest.raises(ExportedPolicyError, match=r"missing \['graphs'\]; re-export"):
        ExportedPolicy(tmp_path)
    with pytest.raises(Exception, match=r"not an export"):
        ExportedPolicy(tmp_path / "nothing")


def test_check_refuses_an_export_that_does_not_reproduce_the_policy(tiny, tiny_torch, tmp_path):
    """The export's own check can fail: graphs of other weights are caught."""
    _, out = tiny
    torch.manual_seed(1)
    other = SmolVLAPolicy.from_config(tiny_torch.policy.config)
    with pytest.raises(ExportError, match=r"onnxruntime fp32 actions differ from PyTorch's"):
        check_export(other, tiny_torch.pre, tiny_torch.post, out, log=lambda _: None)


def test_a_fused_fp32_policy_exports_the_same_graphs(tiny, tiny_torch, tmp_path):
    ckpt, _ = tiny
    policy = SmolVLAPolicy.from_pretrained(ckpt, inference_mode="fp32")
    meta = export_policy(
        policy, tiny_torch.pre, tiny_torch.post, tmp_path / "x", int8=False, log=lambda _: None
    )
    assert meta["check"]["results"]["onnxruntime/fp32"]["max_abs"] <= 1e-4
    with pytest.raises(ExportError, match=r"prepared for inference \(int8\)"):
        export_policy(
            SmolVLAPolicy.from_pretrained(ckpt, inference_mode="int8"),
            tiny_torch.pre,
            tiny_torch.post,
            tmp_path / "y",
        )
