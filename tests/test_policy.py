"""The policy API (LeRobot's names) and its input validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from smolvla.policy import BatchError, SmolVLAPolicy
from tests.conftest import make_batch


def test_select_action_queues_one_chunk(micro_policy, monkeypatch):
    cfg = micro_policy.config
    batch = make_batch(cfg)
    calls = []
    real = micro_policy.model.sample_actions
    monkeypatch.setattr(
        micro_policy.model, "sample_actions", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    noise = torch.randn(2, cfg.chunk_size, cfg.max_action_dim)
    chunk = micro_policy.predict_action_chunk(batch, noise=noise)
    micro_policy.reset()
    actions = [micro_policy.select_action(batch, noise=noise) for _ in range(cfg.n_action_steps)]
    assert len(calls) == 2  # one for predict_action_chunk, one for the whole queue
    assert torch.equal(torch.stack(actions, 1), chunk[:, : cfg.n_action_steps])
    micro_policy.select_action(batch)
    assert len(calls) == 3
    micro_policy.reset()
    micro_policy.select_action(batch)
    assert len(calls) == 4


def test_n_action_steps_shorter_than_chunk(micro_cfg, monkeypatch):
    # chunk_size 4, n_action_steps 2: each chunk's first two actions are executed, then it re-plans
    policy = SmolVLAPolicy.from_config(dataclasses.replace(micro_cfg, n_action_steps=2))
    cfg = policy.config
    assert cfg.chunk_size > cfg.n_action_steps
    batch = make_batch(cfg)
    noise = torch.randn(2, cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(4))
    chunk = policy.predict_action_chunk(batch, noise=noise)  # (2, 4, 2)
    calls = []
    real = policy.model.sample_actions
    monkeypatch.setattr(policy.model, "sample_actions", lambda *a, **k: calls.append(1) or real(*a, **k))
    actions = [policy.select_action(batch, noise=noise) for _ in range(5)]
    assert len(calls) == 3  # steps 0, 2 and 4 plan; 1 and 3 pop the queue
    assert all(a.shape == (2, 2) for a in actions)
    expected = [chunk[:, 0], chunk[:, 1]] * 2 + [chunk[:, 0]]  # same observation and noise: same chunk
    for i, (a, e) in enumerate(zip(actions, expected, strict=True)):
        assert torch.equal(a, e), i


def test_training_loss_is_finite_and_only_trainable_parts_get_gradients(micro_policy):
    micro_policy.train()
    loss, info = micro_policy(make_batch(micro_policy.config, with_actions=True))
    loss.backward()
    assert torch.isfinite(loss) and info["per_sample"].shape == (2,)
    vision = micro_policy.model.vlm_with_expert.vlm.model.vision_model
    assert all(p.grad is None for p in vision.parameters())  # frozen by default
    assert all(p.grad is not None for p in micro_policy.model.vlm_with_expert.lm_expert.parameters())
    assert micro_policy.model.state_proj.weight.grad is not None  # train_state_proj


def test_reduction_none_gives_per_sample_losses(micro_policy):
    batch = make_batch(micro_policy.config, with_actions=True)
    noise = torch.randn(2, micro_policy.config.chunk_size, micro_policy.config.max_action_dim)
    t = torch.tensor([0.2, 0.7])
    mean, _ = micro_policy(batch, noise=noise, time=t)
    per, _ = micro_policy(batch, noise=noise, time=t, reduction="none")
    assert per.shape == (2,)
    steps = (~batch["action_is_pad"]).sum(1).float()
    assert torch.isclose(mean, (per * steps).sum() / steps.sum())


def test_empty_cameras_fill_missing_ones(micro_cfg):
    policy = SmolVLAPolicy.from_config(dataclasses.replace(micro_cfg, empty_cameras=1))
    batch = make_batch(policy.config)
    del batch["observation.images.camera2"]
    obs = policy.prepare_observation(batch)
    assert len(obs.images) == 2 and bool((obs.images[1] == -1).all()) and not obs.image_masks[1].any()
    assert policy.predict_action_chunk(batch).shape == (2, 4, 2)


def _bad(batch, key, value):
    batch = dict(batch)
    if value is None:
        del batch[key]
    else:
        batch[key] = value
    return batch


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("observation.images.camera2", None, r"missing camera\(s\) \['observation.images.camera2'\]"),
        ("observation.state", None, "observation.state: missing"),
        ("observation.state", torch.randn(2, 3, 3), r"observation.state: got shape \(2, 3, 3\)"),
        ("observation.state", torch.randn(2, 5), "observation.state: width 5, expected 3"),
        ("observation.state", torch.tensor([[1.0, float("nan"), 0.0]] * 2), "NaN"),
        (
            "observation.images.camera1",
            torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8),
            "expected float in \\[0, 1\\] \\(divide uint8",
        ),
        ("observation.images.camera1", torch.rand(2, 3, 16, 16) * 255, "looks like 0-255 values"),
        (
            "observation.images.camera1",
            torch.rand(2, 16, 16),
            r"got shape \(2, 16, 16\), expected \[2, 3, H, W\]",
        ),
        ("observation.language.tokens", torch.full((2, 7), 999), r"ids in \[999, 999\], expected \[0, 320\)"),
        ("observation.language.tokens", None, "observation.language.tokens: missing"),
        (
            "observation.language.attention_mask",
            torch.ones(2, 3, dtype=torch.bool),
            "attention_mask: got shape",
        ),
    ],
)
def test_bad_inputs_name_the_field(micro_policy, key, value, match):
    with pytest.raises(BatchError, match=match):
        micro_policy.predict_action_chunk(_bad(make_batch(micro_policy.config), key, value))


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("action", None, "action: missing"),
        ("action", torch.randn(2, 4, 5), r"action: got \(2, 4, 5\)"),
        ("action", torch.full((2, 4, 2), float("inf")), "action: contains NaN or inf"),
        ("action_is_pad", torch.zeros(2, 3, dtype=torch.bool), "action_is_pad: got"),
    ],
)
def test_bad_training_inputs(micro_policy, key, value, match):
    with pytest.raises(BatchError, match=match):
        micro_policy(_bad(make_batch(micro_policy.config, with_actions=True), key, value))


def test_wrong_noise_shape(micro_policy):
    with pytest.raises(BatchError, match="noise: got shape"):
        micro_policy.predict_action_chunk(make_batch(micro_policy.config), noise=torch.randn(2, 3, 3))


def test_bf16_precision_runs_and_stays_close(micro_policy):
    """The bf16 path (backbone and expert in bf16, projections fp32, as LeRobot's checkpoints): same
    chunk as fp32 up to bf16 rounding, and it trains."""
    batch = make_batch(micro_policy.config, with_actions=True)
    noise = torch.randn(2, micro_policy.config.chunk_size, micro_policy.config.max_action_dim)
    ref = micro_policy.predict_action_chunk(batch, noise=noise)
    micro_policy.set_precision(torch.bfloat16)
    assert micro_policy.model.vlm_with_expert.lm_expert.norm.weight.dtype == torch.bfloat16
    assert micro_policy.model.action_out_proj.weight.dtype == torch.float32
    out = micro_policy.predict_action_chunk(batch, noise=noise)
    assert out.dtype == torch.float32 and (out - ref).abs().max() < 0.1
    loss, _ = micro_policy.train()(batch)
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match=r"dtype: got torch\.int8"):
        micro_policy.set_precision(torch.int8)


def test_image_sides_must_fit_patches_and_the_connector(micro_cfg):
    from smolvla.config import ConfigError

    with pytest.raises(ConfigError, match=r"resize_imgs_with_padding: got \(12, 12\).*multiples of 8"):
        SmolVLAPolicy(micro_cfg.override(resize_imgs_with_padding=(12, 12)))
