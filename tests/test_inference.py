"""Inference preparation (smolvla.model.inference): fused and quantized paths against the plain policy."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from smolvla.config import preset
from smolvla.model.backbone import MLP, SelfAttention, VisionAttention
from smolvla.model.inference import (
    FusedMLP,
    FusedSelfAttention,
    FusedVisionAttention,
    InferenceModeError,
    Int8Linear,
    KVOnlyAttention,
    MappedEmbedding,
    resolve_mode,
)
from smolvla.policy import SmolVLAPolicy
from tests.conftest import make_batch, require_shared


def _policy(name: str) -> SmolVLAPolicy:
    torch.manual_seed(0)
    return SmolVLAPolicy.from_config(preset(name)).eval()


def _actions(policy: SmolVLAPolicy, seed: int = 1) -> torch.Tensor:
    cfg = policy.config
    batch = make_batch(cfg, 2)
    noise = torch.randn(2, cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(seed))
    return policy.predict_action_chunk(batch, noise=noise)


@pytest.mark.parametrize("name", ["micro", "tiny"])
def test_fused_fp32_equals_plain_policy(name):
    policy = _policy(name)
    ref = _actions(policy)
    fast = copy.deepcopy(policy).prepare_for_inference("fp32")
    mods = list(fast.modules())
    assert not any(isinstance(m, (MLP, VisionAttention)) for m in mods)  # all swapped for fused ones
    assert any(isinstance(m, FusedMLP) for m in mods) and any(
        isinstance(m, FusedVisionAttention) for m in mods
    )
    vwe = fast.model.vlm_with_expert
    for i, kind in enumerate(vwe.kinds):  # the expert's cross-attention keeps its own projections
        layer = vwe.expert_layer(i)
        if layer is not None:
            assert isinstance(layer.self_attn, SelfAttention if kind == "ca" else FusedSelfAttention)
    text = vwe.vlm.model.text_model.layers
    assert isinstance(text[vwe.last_used].self_attn, KVOnlyAttention) and text[vwe.last_used].mlp is None
    assert all(isinstance(layer.self_attn, FusedSelfAttention) for layer in text[: vwe.last_used])
    assert fast.model.vlm_with_expert.vlm.lm_head is None
    assert (_actions(fast) - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("mode,tol", [("bf16", 0.05), ("int8", 0.1)])
def test_reduced_precision_modes_stay_close(mode, tol):
    policy = _policy("tiny")
    ref = _actions(policy)
    fast = copy.deepcopy(policy).prepare_for_inference(mode)
    if mode == "int8":
        assert not any(type(m) is torch.nn.Linear for m in fast.model.vlm_with_expert.modules())
        assert any(isinstance(m, Int8Linear) for m in fast.modules())
    else:
        assert fast.model.vlm_with_expert.lm_expert.norm.weight.dtype == torch.bfloat16
    err = (_actions(fast) - ref).abs()
    assert torch.isfinite(err).all()
    assert err.max().item() <= tol
    assert err.max().item() > 0  # the mode did change the arithmetic


@pytest.mark.parametrize("mode", ["fp32", "bf16", "int8"])
def test_loading_prepared_equals_preparing_in_memory(tmp_path, mode):
    policy = _policy("tiny")
    policy.save_pretrained(tmp_path)
    before = load_file(tmp_path / "model.safetensors")
    loaded = SmolVLAPolicy.from_pretrained(tmp_path, inference_mode=mode)
    assert loaded.inference_mode == mode
    assert isinstance(loaded.model.vlm_with_expert.vlm.model.text_model.embed_tokens, MappedEmbedding)
    in_memory = SmolVLAPolicy.from_pretrained(tmp_path).prepare_for_inference(mode)
    assert torch.equal(_actions(loaded), _actions(in_memory))
    after = load_file(tmp_path / "model.safetensors")  # the mapped table is a private copy-on-write view
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_prepared_parity_fixture_within_tolerance():
    root = require_shared("parity")
    ref = load_file(root / "ref_outputs.safetensors")
    batch = {k[3:]: v for k, v in ref.items() if k.startswith("in.observation")}
    policy = SmolVLAPolicy.from_pretrained(root / "ckpt", inference_mode="fp32")
    actions = policy.predict_action_chunk(batch, noise=ref["in.infer_noise"])
    assert (actions - ref["out.actions"]).abs().max().item() <= 2e-4


def test_prepared_policy_refuses_training_and_saving(tmp_path):
    policy = _policy("micro").prepare_for_inference("fp32")
    with pytest.raises(RuntimeError, match="prepared for inference"):
        policy.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="cannot be trained"):
        policy(make_batch(policy.config, 2, with_actions=True))
    with pytest.raises(InferenceModeError, match="already prepared"):
        policy.prepare_for_inference("fp32")


def test_bad_mode_names_the_value():
    with pytest.raises(InferenceModeError, match=r"'fp8'.*'auto'"):
        resolve_mode("fp8")
    assert resolve_mode("auto") in ("fp32", "bf16", "int8")


def test_loading_a_checkpoint_missing_a_tensor_fails(tmp_path):
    from safetensors.torch import save_file

    _policy("micro").save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors.pop("model.action_out_proj.weight")
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"action_out_proj\.weight"):
        SmolVLAPolicy.from_pretrained(tmp_path, inference_mode="fp32")


def test_frozen_vision_tower_builds_no_graph():
    # pixels need no gradient and the tower's weights are frozen: autograd records nothing there
    policy = _policy("micro").train()
    pixels = torch.rand(1, 3, 16, 16) * 2 - 1
    vlm = policy.model.vlm_with_expert.vlm
    assert not vlm.embed_image(pixels).requires_grad
    vlm.model.vision_model.requires_grad_(True)
    assert vlm.embed_image(pixels).requires_grad


def test_frozen_parts_in_bf16_keep_trainable_fp32_and_train():
    policy = _policy("micro").train()
    policy.set_precision(torch.bfloat16, frozen_only=True)
    vlm = policy.model.vlm_with_expert.vlm
    assert vlm.model.vision_model.post_layernorm.weight.dtype == torch.bfloat16
    assert vlm.model.text_model.layers[0].self_attn.o_proj.weight.dtype == torch.bfloat16
    trainable = [p for p in policy.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    loss, _ = policy(make_batch(policy.config, 2, with_actions=True))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in trainable)


def test_bf16_training_stores_only_the_frozen_parts_it_can_hold_exactly():
    from smolvla.train.loop import training_precision

    policy = _policy("micro").train()
    vlm = policy.model.vlm_with_expert.vlm
    with torch.no_grad():  # the vision tower as a bf16 checkpoint loads it; the text layers not
        for p in vlm.model.vision_model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    assert training_precision(policy, "fp32", torch.device("cpu")) is None
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    assert training_precision(policy, "bf16", torch.device("cpu")) == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in vlm.model.vision_model.parameters())
    assert vlm.model.text_model.layers[0].self_attn.o_proj.weight.dtype == torch.float32  # would round
    assert all(p.dtype == torch.float32 for p in policy.parameters() if p.requires_grad)
    for k, v in policy.state_dict().items():  # no value changed
        assert torch.equal(v.float(), before[k]), k


def test_training_with_frozen_vlm_skips_its_graph_with_the_same_loss_and_gradients():
    policy = _policy("micro").train()  # train_expert_only: the prefix before the state is constant
    joint = copy.deepcopy(policy)
    joint.model.vlm_with_expert.vlm.requires_grad_(True)  # forces the one joint pass
    batch = make_batch(policy.config, 2, with_actions=True)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(2, policy.config.chunk_size, policy.config.max_action_dim, generator=g)
    time = torch.tensor([0.3, 0.8])
    losses = []
    for p in (policy, joint):
        loss, _ = p(batch, noise=noise, time=time)
        loss.backward()
        losses.append(loss)
    assert abs(losses[0].item() - losses[1].item()) <= 1e-5
    grads = dict(joint.named_parameters())
    checked = 0
    for name, param in policy.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, name
            assert (param.grad - grads[name].grad).abs().max().item() <= 1e-5, name
            checked += 1
    assert checked > 10


def test_both_loaders_report_key_mismatches_the_same_way(tmp_path):
    from safetensors.torch import save_file

    from smolvla.checkpoint import CheckpointError

    _policy("micro").save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.extra.weight"] = torch.zeros(2)
    tensors.pop("model.state_proj.bias")
    save_file(tensors, tmp_path / "model.safetensors")
    messages = []
    for mode in (None, "fp32"):
        with pytest.raises(CheckpointError, match=r"1 missing, 1 unexpected") as e:
            SmolVLAPolicy.from_pretrained(tmp_path, inference_mode=mode)
        messages.append(str(e.value))
        assert "model.state_proj.bias" in messages[-1] and "model.extra.weight" in messages[-1]
    assert messages[0] == messages[1]
