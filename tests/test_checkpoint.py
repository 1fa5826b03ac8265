"""Checkpoint files: bit-identical round trips (mixed dtypes included), strict keys, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from smolvla.checkpoint import CheckpointError
from smolvla.config import ConfigError
from smolvla.policy import SmolVLAPolicy
from tests.conftest import make_batch, require_shared


def test_save_load_round_trip_is_bit_identical(micro_policy, tmp_path):
    micro_policy.save_pretrained(tmp_path / "a")
    loaded = SmolVLAPolicy.from_pretrained(tmp_path / "a")
    for (k1, v1), (k2, v2) in zip(
        micro_policy.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k1 == k2 and v1.dtype == v2.dtype and torch.equal(v1, v2), k1
    loaded.save_pretrained(tmp_path / "b")
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    assert (tmp_path / "a/config.json").read_text() == (tmp_path / "b/config.json").read_text()
    # a backbone known by name is referenced by name, not copied
    assert json.loads((tmp_path / "a/config.json").read_text())["vlm_model_name"] == "smolvla/micro-backbone"
    assert not (tmp_path / "a/vlm").exists()
    noise = torch.randn(2, micro_policy.config.chunk_size, micro_policy.config.max_action_dim)
    batch = make_batch(micro_policy.config)
    assert torch.equal(
        micro_policy.predict_action_chunk(batch, noise), loaded.predict_action_chunk(batch, noise)
    )


def test_lerobot_checkpoint_round_trip(tmp_path):
    src = require_shared("parity") / "ckpt"
    policy = SmolVLAPolicy.from_pretrained(src)
    policy.save_pretrained(tmp_path)
    a, b = load_file(src / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    ours, theirs = (
        json.loads((tmp_path / "config.json").read_text()),
        json.loads((src / "config.json").read_text()),
    )
    assert ours == theirs  # same fields, same values: LeRobot reads it back


def test_mixed_dtypes_are_kept(micro_policy, tmp_path):
    micro_policy.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    # As LeRobot writes them: backbone and expert in bf16, the projections in fp32.
    mixed = {k: (v.bfloat16() if "vlm_with_expert" in k else v) for k, v in tensors.items()}
    save_file(mixed, str(path), metadata={"format": "pt"})
    loaded = SmolVLAPolicy.from_pretrained(tmp_path)
    assert loaded.model.state_proj.weight.dtype == torch.float32  # runtime dtype set by the model
    loaded.save_pretrained(tmp_path / "out")
    again = load_file(tmp_path / "out/model.safetensors")
    assert all(again[k].dtype == mixed[k].dtype and torch.equal(again[k], mixed[k]) for k in mixed)


def test_key_mismatch_lists_missing_and_unexpected(micro_policy, tmp_path):
    micro_policy.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    del tensors["model.state_proj.bias"]
    tensors["model.extra.weight"] = torch.zeros(1)
    save_file(tensors, str(path))
    with pytest.raises(
        CheckpointError,
        match=r"1 missing, 1 unexpected(.|\n)*model\.state_proj\.bias(.|\n)*model\.extra\.weight",
    ):
        SmolVLAPolicy.from_pretrained(tmp_path)


def test_shape_mismatch_names_the_key(micro_policy, tmp_path):
    micro_policy.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    tensors["model.state_proj.bias"] = torch.zeros(3)
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=r"model\.state_proj\.bias has shape \(3,\)"):
        SmolVLAPolicy.from_pretrained(tmp_path)


def test_corrupt_safetensors(micro_policy, tmp_path):
    micro_policy.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        SmolVLAPolicy.from_pretrained(tmp_path)


def test_other_policy_type_is_refused(micro_policy, tmp_path):
    micro_policy.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["type"] = "act"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="type is 'act', expected 'smolvla'"):
        SmolVLAPolicy.from_pretrained(tmp_path)


def test_missing_checkpoint_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing"):
        SmolVLAPolicy.from_pretrained(tmp_path / "nothing")


def test_load_vlm_weights_from_a_backbone_folder(micro_policy, tmp_path):
    """A SmolVLM2-style repo (config.json + safetensors with transformers' key names) is loaded into
    the VLM when `load_vlm_weights` is true; text layers past num_vlm_layers are dropped."""
    vlm = micro_policy.model.vlm_with_expert.vlm
    bb = micro_policy.backbone
    repo = tmp_path / "my-smolvlm"
    repo.mkdir()
    full = json.loads(json.dumps(bb.to_hf_dict()))
    full["text_config"]["num_hidden_layers"] = 3  # the repo has one more layer than the policy keeps
    (repo / "config.json").write_text(json.dumps(full))
    weights = {k: torch.randn_like(v) for k, v in vlm.state_dict().items()}
    extra = {
        k.replace("layers.1.", "layers.2."): torch.randn_like(v)
        for k, v in weights.items()
        if ".layers.1." in k
    }
    save_file({**weights, **extra}, str(repo / "model.safetensors"))
    cfg = micro_policy.config.override(vlm_model_name=str(repo), load_vlm_weights=True)
    policy = SmolVLAPolicy.from_config(cfg)
    got = policy.model.vlm_with_expert.vlm.state_dict()
    assert all(torch.equal(got[k], weights[k]) for k in weights)
    # A backbone from a folder is written beside the checkpoint, so the folder stands alone.
    policy.save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(repo)
    assert json.loads((tmp_path / "ckpt/config.json").read_text())["vlm_model_name"] == "vlm"
    again = SmolVLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert again.backbone == policy.backbone


def test_backbone_and_tokenizer_from_an_offline_hf_cache(micro_policy, tmp_path, monkeypatch):
    """A checkpoint naming its backbone by hub repo id, with the repo only in the local HF cache
    (as after an earlier download) and HF_HUB_OFFLINE=1: the same path a user's files take."""
    from smolvla.processing import make_pre_post_processors, save_byte_tokenizer
    from tests.test_hub import make_cache

    snap = make_cache(
        tmp_path / "hf", "acme/tiny-vlm", {"config.json": json.dumps(micro_policy.backbone.to_hf_dict())}
    )
    save_byte_tokenizer(snap)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = micro_policy.config.override(vlm_model_name="acme/tiny-vlm")
    policy = SmolVLAPolicy.from_config(cfg)
    assert policy.backbone == micro_policy.backbone and policy.backbone_dir == snap
    pre, _ = make_pre_post_processors(
        cfg,
        dataset_stats={
            "observation.state": {"mean": [0.0] * 3, "std": [1.0] * 3},
            "action": {"mean": [0.0] * 2, "std": [1.0] * 2},
        },
    )
    out = pre(
        {
            **{k: v[0] for k, v in make_batch(cfg).items() if k.startswith("observation.images")},
            "observation.state": torch.zeros(3),
            "task": "hi",
        }
    )
    assert out["observation.language.tokens"][0].tolist() == [ord("h") + 3, ord("i") + 3, ord("\n") + 3]
    assert policy.predict_action_chunk(out).shape == (1, 4, 2)
    with pytest.raises(FileNotFoundError, match="acme/missing"):
        SmolVLAPolicy.from_config(cfg.override(vlm_model_name="acme/missing"))
