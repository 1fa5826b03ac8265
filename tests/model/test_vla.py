"""Invariants of the network that hold for every config, not only the defaults: the training path
(one joint pass) equals the cached inference path; actions attend causally; gradients reach every
expert layer; positions skip padding."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from smolvla.config import preset
from smolvla.model.backbone import apply_rope
from smolvla.model.vla import make_att_2d_masks, sinusoidal_time_embedding
from smolvla.policy import SmolVLAPolicy
from tests.conftest import make_batch

VARIANTS = {
    "default": {},
    "fewer_expert_layers": {"num_vlm_layers": 2, "num_expert_layers": 1},
    "expert_every_2nd_of_4": {"num_expert_layers": 2, "num_vlm_layers": 4},
    "self_attn_only": {"attention_mode": "self_attn"},
    "sa_every_3": {"self_attn_every_n_layers": 3, "num_vlm_layers": 4},
    "image_special_tokens": {"add_image_special_tokens": True},
    "prefix_length": {"prefix_length": 30},
    "wide_expert": {"expert_width_multiplier": 1.5},
    "no_resize": {"resize_imgs_with_padding": None},
    "no_cache": {"use_cache": False},
}


def policy_for(**overrides) -> SmolVLAPolicy:
    cfg = preset("micro")
    if overrides.get("num_vlm_layers", 0) > 2:  # the micro backbone has 2 text layers: widen it
        from smolvla.config import KNOWN_BACKBONES, MICRO_BACKBONE

        bb = KNOWN_BACKBONES[MICRO_BACKBONE]
        backbone = dataclasses.replace(bb, text=dataclasses.replace(bb.text, num_hidden_layers=4))
    else:
        backbone = None
    if overrides.get("resize_imgs_with_padding", 0) is None:  # both cameras at the tower's own size
        from smolvla.config import FeatureType, PolicyFeature

        cams = {k: PolicyFeature(FeatureType.VISUAL, (3, 16, 16)) for k in cfg.image_features}
        cfg = dataclasses.replace(cfg, input_features={**cfg.input_features, **cams})
    cfg = dataclasses.replace(cfg, **overrides)
    torch.manual_seed(0)
    policy = SmolVLAPolicy(cfg, backbone) if backbone else SmolVLAPolicy.from_config(cfg)
    with torch.no_grad():  # make every weight matter (norms start at exactly 1)
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return policy


@pytest.mark.parametrize("name", VARIANTS)
def test_joint_pass_equals_cached_inference(name):
    policy = policy_for(**VARIANTS[name])
    cfg = policy.config
    batch = make_batch(cfg)
    obs = policy.prepare_observation(batch)
    model = policy.model
    prefix = model.embed_prefix(obs)
    b, s = obs.batch_size, cfg.chunk_size
    x = torch.randn(b, s, cfg.max_action_dim)
    t = torch.tensor([0.3, 0.9])
    with torch.no_grad():
        v_joint = model.velocity(x, t, model.prefill(obs, use_cache=False))
        v_cached = model.velocity(x, t, model.prefill(obs, use_cache=True))
    assert torch.allclose(v_joint, v_cached, atol=1e-5), (v_joint - v_cached).abs().max()
    noise = torch.randn(b, s, cfg.max_action_dim)
    other = policy_for(**{**VARIANTS[name], "use_cache": not cfg.use_cache})
    a, a2 = policy.predict_action_chunk(batch, noise=noise), other.predict_action_chunk(batch, noise=noise)
    assert torch.allclose(a, a2, atol=1e-5)  # with and without the prefix cache
    if cfg.prefix_length > 0:
        assert prefix.embs.shape[1] == cfg.prefix_length


@pytest.mark.parametrize("name", VARIANTS)
def test_gradients_reach_every_trainable_parameter(name):
    policy = policy_for(**VARIANTS[name], train_expert_only=False, freeze_vision_encoder=False).train()
    loss, _ = policy(make_batch(policy.config, with_actions=True))
    loss.backward()
    no_grad = [
        n
        for n, p in policy.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum())
    ]
    assert not no_grad, no_grad
    expert = policy.model.vlm_with_expert.lm_expert
    assert all(p.grad is not None for p in expert.parameters())


def test_actions_attend_causally():
    policy = policy_for()
    cfg = policy.config
    prefix = policy.model.embed_prefix(policy.prepare_observation(make_batch(cfg)))
    x = torch.randn(2, cfg.chunk_size, cfg.max_action_dim)
    x2 = x.clone()
    x2[:, -1] += 1.0  # perturb only the last action token
    t = torch.full((2,), 0.5)
    with torch.no_grad():
        v1, v2 = policy.model.joint_velocity(prefix, x, t), policy.model.joint_velocity(prefix, x2, t)
    changed = (v1 - v2).abs().amax(dim=(0, 2)) > 1e-7
    assert changed.tolist() == [False] * (cfg.chunk_size - 1) + [True]


def test_padding_tokens_do_not_change_the_result():
    policy = policy_for()
    batch = make_batch(policy.config, b=1)
    longer = dict(batch)
    pad = torch.full((1, 4), 2)
    longer["observation.language.tokens"] = torch.cat([batch["observation.language.tokens"], pad], 1)
    longer["observation.language.attention_mask"] = torch.cat(
        [batch["observation.language.attention_mask"], torch.zeros(1, 4, dtype=torch.bool)], 1
    )
    noise = torch.randn(1, policy.config.chunk_size, policy.config.max_action_dim)
    a = policy.predict_action_chunk(batch, noise=noise)
    b = policy.predict_action_chunk(longer, noise=noise)
    assert torch.allclose(a, b, atol=1e-5)


def test_att_2d_mask_semantics():
    pad = torch.tensor([[True, True, False, True, True, True]])
    ar = torch.tensor([[0, 0, 0, 1, 1, 1]])
    m = make_att_2d_masks(pad, ar)[0]
    assert m[0, 1] and m[1, 0] and not m[0, 3]  # prefix bidirectional, not into the state
    assert not m[2].any() and not m[:, 2].any()  # padding neither attends nor is attended
    assert m[4, 3] and m[4, 4] and not m[4, 5]  # causal among the last tokens


def test_time_embedding_sin_first_and_periods():
    emb = sinusoidal_time_embedding(torch.tensor([0.25]), 8, 4e-3, 4.0)
    period0 = 4e-3
    assert emb.dtype == torch.float64
    assert torch.isclose(
        emb[0, 0], torch.sin(torch.tensor(0.25 * 2 * torch.pi / period0, dtype=torch.float64))
    )
    assert torch.isclose(
        emb[0, 4 + 3], torch.cos(torch.tensor(0.25 * 2 * torch.pi / 4.0, dtype=torch.float64))
    )


def test_rope_base_is_10000_split_half():
    x = torch.zeros(1, 1, 1, 4)
    x[..., 0] = 1.0  # first half, dim 0
    out = apply_rope(x, torch.tensor([[3]]))
    # dim 0 pairs with dim 2 at frequency 10000^0 = 1
    assert torch.allclose(
        out[0, 0, 0], torch.tensor([torch.cos(torch.tensor(3.0)), 0, torch.sin(torch.tensor(3.0)), 0])
    )
    x = torch.zeros(1, 1, 1, 4)
    x[..., 1] = 1.0  # frequency 10000^(-2/4) = 0.01
    out = apply_rope(x, torch.tensor([[3]]))
    assert torch.isclose(out[0, 0, 0, 1], torch.cos(torch.tensor(0.03)))


def test_vision_tower_calls_of_any_size_give_the_same_prefix():
    policy = policy_for().eval()
    batch = make_batch(policy.config, 3)
    obs = policy.prepare_observation(batch)
    model = policy.model
    out = {}
    for budget in (1, 32, None):  # one image per call, two, all at once (16 patches per image)
        model.vision_tokens_per_call = budget
        with torch.no_grad():
            out[budget] = model.embed_prefix(obs).embs
    torch.testing.assert_close(out[1], out[None], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[32], out[None], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("frozen", [True, False], ids=["expert_only", "everything"])
@pytest.mark.parametrize("name", ["default", "sa_every_3", "self_attn_only"])
def test_gradient_checkpointing_gives_the_same_gradients_and_keeps_less(name, frozen):
    """Recomputing in the backward pass changes no loss or gradient, and autograd keeps fewer bytes."""
    from smolvla.apps.bench import saved_activation_bytes

    flags = {} if frozen else {"train_expert_only": False, "freeze_vision_encoder": False}
    batch = make_batch(policy_for(**VARIANTS[name], **flags).config, with_actions=True)
    t = torch.tensor([0.2, 0.8])
    out = {}
    for on in (False, True):
        policy = policy_for(**VARIANTS[name], **flags).train().set_gradient_checkpointing(on)
        noise = torch.randn(
            2,
            policy.config.chunk_size,
            policy.config.max_action_dim,
            generator=torch.Generator().manual_seed(0),
        )
        kept, (loss, _) = saved_activation_bytes(lambda p=policy, x=noise: p(batch, noise=x, time=t), policy)
        loss.backward()
        out[on] = (loss.detach(), {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}, kept)
    assert torch.equal(out[False][0], out[True][0])
    assert out[False][1].keys() == out[True][1].keys()
    for n, g in out[False][1].items():
        torch.testing.assert_close(out[True][1][n], g, rtol=1e-5, atol=1e-7, msg=n)
    assert out[True][2] < 0.6 * out[False][2], (out[True][2], out[False][2])
