"""The `base` preset is exactly lerobot/smolvla_base: built on the meta device (no memory), its
state dict must have LeRobot's 500 keys, shapes and 450,046,176 parameters (spec §3)."""

from __future__ import annotations

import torch

from smolvla.config import preset
from smolvla.policy import SmolVLAPolicy


def build_base_on_meta() -> SmolVLAPolicy:
    with torch.device("meta"):
        return SmolVLAPolicy(preset("base"))


def test_base_keys_shapes_and_count():
    state = build_base_on_meta().state_dict()
    assert len(state) == 500
    assert sum(t.numel() for t in state.values()) == 450_046_176
    v = "model.vlm_with_expert.vlm.model."
    e = "model.vlm_with_expert.lm_expert.layers."
    expected = {
        v + "vision_model.embeddings.patch_embedding.weight": (768, 3, 16, 16),
        v + "vision_model.embeddings.position_embedding.weight": (1024, 768),
        v + "vision_model.encoder.layers.11.mlp.fc1.weight": (3072, 768),
        v + "vision_model.post_layernorm.bias": (768,),
        v + "connector.modality_projection.proj.weight": (960, 12288),
        v + "text_model.embed_tokens.weight": (49280, 960),
        v + "text_model.layers.15.self_attn.k_proj.weight": (320, 960),
        v + "text_model.layers.15.mlp.down_proj.weight": (960, 2560),
        v + "text_model.norm.weight": (960,),
        "model.vlm_with_expert.vlm.lm_head.weight": (49280, 960),
        e + "0.self_attn.q_proj.weight": (960, 720),
        e + "0.self_attn.k_proj.weight": (320, 720),  # self-attention layer
        e + "1.self_attn.k_proj.weight": (320, 320),  # cross-attention layer: projects the VLM's keys
        e + "15.self_attn.v_proj.weight": (320, 320),
        e + "14.self_attn.v_proj.weight": (320, 720),
        e + "3.self_attn.o_proj.weight": (720, 960),
        e + "3.mlp.gate_proj.weight": (2048, 720),
        "model.vlm_with_expert.lm_expert.norm.weight": (720,),
        "model.state_proj.weight": (960, 32),
        "model.action_in_proj.weight": (720, 32),
        "model.action_out_proj.weight": (32, 720),
        "model.action_time_mlp_in.weight": (720, 1440),
        "model.action_time_mlp_out.bias": (720,),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith(v + "text_model.layers.16.") for k in state)
    assert not any("rotary" in k or "inv_freq" in k for k in state)


def test_base_parameter_budget_and_trainable():
    policy = build_base_on_meta()
    parts = {
        "vision": policy.model.vlm_with_expert.vlm.model.vision_model,
        "connector": policy.model.vlm_with_expert.vlm.model.connector,
        "expert": policy.model.vlm_with_expert.lm_expert,
    }
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    assert counts == {"vision": 86_433_024, "connector": 11_796_480, "expert": 98_245_840}
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    assert trainable == 99_880_992  # the expert plus the five projections (spec §3)
