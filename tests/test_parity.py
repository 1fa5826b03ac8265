"""LeRobot 0.6.1's own outputs on its own checkpoint (../shared/parity), reproduced within its README's
tolerances. This is the gate for faithfulness: a larger difference is a bug, not noise."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from smolvla.policy import SmolVLAPolicy
from tests.conftest import require_shared


@pytest.fixture(scope="module")
def parity():
    root = require_shared("parity")
    ref = load_file(root / "ref_outputs.safetensors")
    with safe_open(str(root / "ref_outputs.safetensors"), "pt") as f:
        meta = f.metadata()
    policy = SmolVLAPolicy.from_pretrained(root / "ckpt")
    batch = {k[3:]: v for k, v in ref.items() if k.startswith("in.observation")}
    return policy, batch, ref, meta


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def test_image_embedding(parity):
    policy, batch, ref, _ = parity
    emb = policy.model.vlm_with_expert.vlm.embed_image(batch["observation.images.cam_high"] * 2 - 1)
    assert maxdiff(emb, ref["out.image_emb_cam_high"]) <= 1e-4


def test_prefix_embeddings(parity):
    policy, batch, ref, _ = parity
    prefix = policy.model.embed_prefix(policy.prepare_observation(batch))
    assert maxdiff(prefix.embs, ref["out.prefix_embs"]) <= 1e-4


def test_first_step_velocity(parity):
    policy, batch, ref, _ = parity
    model = policy.model
    obs = policy.prepare_observation(batch)
    t = torch.ones(obs.batch_size)
    with torch.no_grad():
        v = model.velocity(ref["in.infer_noise"], t, model.prefill(obs))
        v_joint = model.velocity(ref["in.infer_noise"], t, model.prefill(obs, use_cache=False))
    assert maxdiff(v, ref["out.v_t_first_step"]) <= 1e-4
    # the training path (one joint pass) and the cached inference path agree
    assert maxdiff(v_joint, ref["out.v_t_first_step"]) <= 1e-4


@pytest.mark.parametrize("steps,key", [(10, "out.actions"), (1, "out.actions_1step")])
def test_actions(parity, steps, key):
    policy, batch, ref, _ = parity
    actions = policy.predict_action_chunk(batch, noise=ref["in.infer_noise"], num_steps=steps)
    assert maxdiff(actions, ref[key]) <= 2e-4


def test_loss(parity):
    policy, batch, ref, meta = parity
    policy.train()
    try:
        train = dict(batch, action=ref["in.action"], action_is_pad=ref["in.action_is_pad"])
        loss, info = policy(train, noise=ref["in.train_noise"], time=ref["in.train_time"])
        actions = torch.nn.functional.pad(ref["in.action"], (0, 32 - 6))
        losses = policy.model(
            policy.prepare_observation(batch),
            actions,
            noise=ref["in.train_noise"],
            time=ref["in.train_time"],
        )
    finally:
        policy.eval()
    assert abs(loss.item() - ref["out.loss"].item()) <= 1e-5 * abs(ref["out.loss"].item())
    assert maxdiff(losses, ref["out.losses_model"]) <= 1e-3
    logged = json.loads(meta["loss_dict"])
    for k in ("losses_after_forward", "losses_after_in_ep_bound"):
        assert abs(info[k].item() - logged[k]) <= 1e-5 * abs(logged[k]), k
