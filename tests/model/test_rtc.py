"""Real-time chunking: prefix weights, the guidance clamp, and guided sampling against the policy."""

from __future__ import annotations

import pytest
import torch

from smolvla.model.rtc import RTCConfig, guidance_weight, prefix_weights, sample_actions_rtc
from tests.conftest import make_batch


def test_prefix_weights():
    w = prefix_weights(inference_delay=2, horizon=6, total=8, schedule="linear")
    assert w.tolist() == pytest.approx([1, 1, 4 / 5, 3 / 5, 2 / 5, 1 / 5, 0, 0])
    e = prefix_weights(2, 6, 8, "exp")
    assert e[:2].tolist() == [1, 1] and e[6:].tolist() == [0, 0] and bool((e[2:6] < w[2:6]).all())
    assert prefix_weights(2, 6, 8, "ones").tolist() == [1] * 6 + [0, 0]
    assert prefix_weights(2, 6, 8, "zeros").tolist() == [1, 1] + [0] * 6
    assert prefix_weights(9, 6, 8).tolist() == [1] * 6 + [0, 0]  # delay past the horizon: all of it
    with pytest.raises(ValueError, match="schedule: got 'cubic'"):
        prefix_weights(1, 2, 3, "cubic")


def test_guidance_weight_is_clamped():
    assert guidance_weight(1.0, 10.0) == 10.0  # pure noise: the unclamped weight is infinite
    assert guidance_weight(0.0, 10.0) == 10.0
    assert guidance_weight(0.5, 10.0) == pytest.approx(2.0)  # (1-tau)/tau * ((1-tau)^2+tau^2)/(1-tau)^2
    assert guidance_weight(0.5, 1.5) == 1.5


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="execution_horizon: got 0"):
        RTCConfig(execution_horizon=0)
    with pytest.raises(ValueError, match="max_guidance_weight: got -1"):
        RTCConfig(max_guidance_weight=-1)


def test_without_a_previous_chunk_it_is_the_policys_sampler(micro_policy, micro_cfg):
    batch = make_batch(micro_cfg)
    noise = torch.randn(
        2, micro_cfg.chunk_size, micro_cfg.max_action_dim, generator=torch.Generator().manual_seed(1)
    )
    expected = micro_policy.predict_action_chunk(batch, noise)
    torch.testing.assert_close(sample_actions_rtc(micro_policy, batch, None, 0, noise=noise), expected)
    empty = torch.zeros(2, 0, micro_cfg.action_feature.shape[0])
    torch.testing.assert_close(sample_actions_rtc(micro_policy, batch, empty, 0, noise=noise), expected)


def test_guidance_pulls_the_frozen_prefix_toward_the_previous_chunk(micro_policy, micro_cfg):
    batch = make_batch(micro_cfg)
    a, s = micro_cfg.action_feature.shape[0], micro_cfg.chunk_size
    noise = torch.randn(2, s, micro_cfg.max_action_dim, generator=torch.Generator().manual_seed(2))
    prev = torch.randn(2, s - 1, a, generator=torch.Generator().manual_seed(3))
    free = sample_actions_rtc(micro_policy, batch, None, 0, noise=noise)
    cfg = RTCConfig(execution_horizon=s, max_guidance_weight=10.0)
    guided = sample_actions_rtc(micro_policy, batch, prev, 2, cfg, noise=noise)
    err_free = (free[:, :2] - prev[:, :2]).norm()
    err_guided = (guided[:, :2] - prev[:, :2]).norm()
    assert err_guided < 0.8 * err_free
    with pytest.raises(ValueError, match=r"prev_chunk: got shape \(2, 9, 2\)"):
        sample_actions_rtc(micro_policy, batch, torch.zeros(2, 9, a), 0)


def test_real_time_chunker_guides_toward_the_unexecuted_rest(micro_policy, micro_cfg):
    from smolvla.model.rtc import RealTimeChunker

    batch = make_batch(micro_cfg, b=1)
    rtc = RealTimeChunker(micro_policy, RTCConfig(execution_horizon=4))
    first = rtc.sample(batch, timestep=10)
    assert rtc.last_prefix_len == 0
    torch.testing.assert_close(rtc.remainder(11), first[:, 1:])
    assert rtc.remainder(9) is None and rtc.remainder(10 + micro_cfg.chunk_size) is None
    rtc.sample(batch, timestep=12, inference_delay=1)
    assert rtc.last_prefix_len == micro_cfg.chunk_size - 2 and rtc.prev_timestep == 12
    rtc.reset()
    assert rtc.remainder(12) is None


def test_a_guidance_hook_replaces_each_euler_step(micro_policy, micro_cfg):
    batch = make_batch(micro_cfg)
    noise = torch.randn(
        2, micro_cfg.chunk_size, micro_cfg.max_action_dim, generator=torch.Generator().manual_seed(5)
    )
    seen = []

    def same(x_t, t, velocity_fn):  # the identity hook: the unguided step
        seen.append(t)
        return velocity_fn(x_t)

    expected = micro_policy.predict_action_chunk(batch, noise, num_steps=4)
    torch.testing.assert_close(
        micro_policy.predict_action_chunk(batch, noise, 4, guidance=same), expected, rtol=0, atol=0
    )
    assert seen == pytest.approx([1.0, 0.75, 0.5, 0.25])
    zero = micro_policy.predict_action_chunk(
        batch, noise, 4, guidance=lambda x_t, t, fn: torch.zeros_like(x_t)
    )
    torch.testing.assert_close(zero, noise[:, :, : micro_cfg.action_feature.shape[0]])  # no velocity: x stays
