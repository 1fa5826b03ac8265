"""Config: LeRobot's JSON read and written unchanged, presets, overrides, clear errors."""

from __future__ import annotations

import json

import pytest

from smolvla.config import (
    KNOWN_BACKBONES,
    SMOLVLM2_500M,
    BackboneConfig,
    ConfigError,
    NormMode,
    SmolVLAConfig,
    expert_intermediate_size,
    preset,
)
from tests.conftest import require_shared


def test_lerobot_config_json_round_trip():
    path = require_shared("parity") / "ckpt" / "config.json"
    raw = json.loads(path.read_text())
    cfg = SmolVLAConfig.load(path)
    assert cfg.num_vlm_layers == 4 and cfg.resize_imgs_with_padding == (128, 128)
    assert cfg.normalization_mapping["STATE"] is NormMode.MEAN_STD
    assert list(cfg.image_features) == ["observation.images.cam_high", "observation.images.cam_wrist"]
    assert cfg.to_dict() == raw


def test_backbone_500m_matches_reference_config():
    path = require_shared("reference") / "smolvlm2_500m_config.json"
    assert BackboneConfig.from_hf_dict(json.loads(path.read_text())) == KNOWN_BACKBONES[SMOLVLM2_500M]
    assert KNOWN_BACKBONES[SMOLVLM2_500M].tokens_per_image == 64


def test_backbone_hf_dict_round_trip():
    for bb in KNOWN_BACKBONES.values():
        assert BackboneConfig.from_hf_dict(bb.to_hf_dict()).text == bb.text


def test_expert_intermediate_size():
    assert expert_intermediate_size(720) == 2048
    assert expert_intermediate_size(96) == 256


def test_presets():
    base = preset("base")
    assert base.load_vlm_weights and base.pad_language_to == "max_length" and base.prefix_length == 0
    assert len(base.image_features) == 3
    for name in ("tiny", "micro"):
        assert preset(name).vlm_model_name in KNOWN_BACKBONES
    with pytest.raises(ConfigError, match="preset: got 'huge'"):
        preset("huge")


def test_override_parses_command_line_strings():
    cfg = preset("micro").override(
        n_action_steps="2",
        freeze_vision_encoder="false",
        resize_imgs_with_padding="[32, 32]",
        optimizer_lr="3e-4",
    )
    assert cfg.n_action_steps == 2 and cfg.freeze_vision_encoder is False
    assert cfg.resize_imgs_with_padding == (32, 32) and cfg.optimizer_lr == 3e-4


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("chunk_sise", 3, "unknown SmolVLA config field 'chunk_sise' \\(did you mean chunk_size\\?\\)"),
        ("n_action_steps", 99, "n_action_steps: got 99, expected at most chunk_size"),
        ("num_expert_layers", 3, "num_expert_layers: got 3, expected a divisor of num_vlm_layers"),
        ("pad_language_to", "left", "pad_language_to: got 'left'"),
        ("use_delta_joint_actions_aloha", True, "use_delta_joint_actions_aloha"),
        ("chunk_size", 0, "chunk_size: got 0, expected a positive integer"),
        ("normalization_mapping", {"STATE": "ZSCORE"}, "normalization_mapping"),
        ("adapt_to_pi_aloha", True, "adapt_to_pi_aloha: got True"),
        ("max_action_dim", 1, "output_features.action: width 2 is larger than max_action_dim"),
    ],
)
def test_bad_values_name_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        preset("micro").override(**{field: value})


def test_bad_json_types(tmp_path):
    d = preset("micro").to_dict()
    d["chunk_size"] = "fifty"
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="chunk_size is 'fifty', expected an integer"):
        SmolVLAConfig.load(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        SmolVLAConfig.load(tmp_path / "config.json")
