"""Hostile and careless checkpoints: every bad input is a SmolVLAError naming the field and the value, and
loading never changes a file of the checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from safetensors.torch import load_file, save_file

from smolvla.config import OPTIONAL_FIELDS, ConfigError, PolicyFeature, SmolVLAConfig, preset
from smolvla.errors import SmolVLAError
from smolvla.policy import SmolVLAPolicy
from smolvla.processing import make_pre_post_processors
from smolvla.processing.images import ProcessorError, resize_with_pad
from smolvla.processing.normalize import Normalizer, StatsError
from smolvla.processing.pipeline import (
    POSTPROCESSOR_FILE,
    POSTPROCESSOR_STATE_FILE,
    PREPROCESSOR_FILE,
    PREPROCESSOR_STATE_FILE,
)
from tests.conftest import require_shared, save_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint("micro", tmp_path_factory.mktemp("hostile") / "micro")


@pytest.fixture
def copy(ckpt: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(ckpt, tmp_path / "ckpt"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def edit_config(folder: Path, **changes: object) -> None:
    d = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is DROP:
            del d[k]
        else:
            d[k] = v
    (folder / "config.json").write_text(json.dumps(d))


def edit_stats(folder: Path, filename: str, key: str, value: torch.Tensor) -> None:
    flat = load_file(folder / filename)
    flat[key] = value
    save_file(flat, folder / filename)


DROP = object()


def load_all(folder: Path) -> None:
    policy = SmolVLAPolicy.from_pretrained(folder)
    make_pre_post_processors(policy.config, pretrained_path=folder)


def expect_error(folder: Path, error: type[Exception], match: str) -> None:
    before = snapshot(folder)
    with pytest.raises(error, match=match):
        load_all(folder)
    assert snapshot(folder) == before  # nothing lost, nothing rewritten


# -- config.json ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["chunk_size", "type", "input_features", "max_state_dim", "vlm_model_name"])
def test_a_missing_field_that_shapes_the_network_is_an_error(copy, field):
    edit_config(copy, **{field: DROP})
    expect_error(copy, ConfigError, rf"{field}")


def test_missing_chunk_size_does_not_become_50(copy):
    edit_config(copy, chunk_size=DROP)
    expect_error(copy, ConfigError, r"missing field\(s\) chunk_size")


@pytest.mark.parametrize("field", sorted(OPTIONAL_FIELDS))
def test_fields_lerobot_may_omit_keep_its_defaults(copy, field):
    edit_config(copy, **{field: DROP})
    loaded = SmolVLAConfig.load(copy / "config.json")
    assert getattr(loaded, field) == getattr(SmolVLAConfig(), field)


def test_the_lerobot_written_parity_checkpoint_still_loads():
    cfg = SmolVLAConfig.load(require_shared("parity/ckpt") / "config.json")
    assert cfg.num_vlm_layers == 4 and cfg.chunk_size == 50


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"max_state_dim": 10**12}, r"max_state_dim: got 1000000000000, expected a positive integer"),
        ({"chunk_size": 10**9, "n_action_steps": 4}, r"chunk_size: got 1000000000, expected"),
        ({"resize_imgs_with_padding": ["a", "b"]}, r"resize_imgs_with_padding is \['a', 'b'\]"),
        ({"optimizer_betas": [0.9]}, r"optimizer_betas is \[0.9\], expected a list of 2 floats"),
        ({"tags": 5}, r"tags is 5, expected a list of strings"),
        ({"normalization_mapping": {"STATE": [1]}}, r"normalization_mapping is"),
        (
            {"input_features": {"observation.state": "STATE"}},
            r"input_features.observation.state: got 'STATE'",
        ),
        (
            {"input_features": {"observation.state": {"type": "STATE", "shape": "[3]"}}},
            r"observation.state.shape: got '\[3\]', expected",
        ),
        (
            {"input_features": {"observation.state": {"type": "STATE", "shape": [True]}}},
            r"observation.state.shape: got \[True\]",
        ),
        (
            {"input_features": {"observation.images.camera1": {"type": "VISUAL", "shape": [3, 1, 4096]}}},
            r"input_features.observation.images.camera1.shape: got \[3, 1, 4096\], which keeps no row",
        ),
        (
            {"input_features": {"observation.images.camera1": {"type": "VISUAL", "shape": [4, 16, 16]}}},
            r"camera1.shape: got \[4, 16, 16\], expected \[3, height, width\]",
        ),
        ({"min_period": float("nan")}, r"min_period is nan, expected a finite number"),
        ({"empty_cameras": 10**9}, r"empty_cameras: got 1000000000, expected a non-negative integer"),
    ],
)
def test_absurd_and_mistyped_values_name_field_and_value(copy, changes, match):
    edit_config(copy, **changes)
    expect_error(copy, ConfigError, match)


# -- normalization stats in the processor files ---------------------------------------------------------


@pytest.mark.parametrize("filename", [PREPROCESSOR_STATE_FILE, POSTPROCESSOR_STATE_FILE])
@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("action.std", torch.tensor([-1.0, 1.0]), r"\['action'\]\['std'\] is negative: \[-1, 1\]"),
        ("action.std", torch.tensor([float("nan"), 1.0]), r"\['action'\]\['std'\] is not finite: \[nan, 1\]"),
        ("action.min", torch.tensor([2.0, -1.0]), r"\['action'\]: min > max at index 0 \(2 > 1\)"),
        ("action.q01", torch.tensor([5.0, -1.0]), r"\['action'\]: q01 > q99 at index 0"),
        ("action.mean", torch.tensor([0.0, 0.0, 0.0]), r"\['action'\]\['mean'\] has shape \(3,\)"),
    ],
)
def test_stats_that_cannot_be_right_are_rejected(copy, filename, key, value, match):
    edit_stats(copy, filename, key, value)
    expect_error(copy, StatsError, match)


def test_zero_std_is_a_constant_dimension_and_loads(copy):
    edit_stats(copy, POSTPROCESSOR_STATE_FILE, "action.std", torch.tensor([0.0, 1.0]))
    load_all(copy)


@pytest.mark.parametrize("eps", [-1, 0, "abc", None, float("inf"), True])
def test_processor_eps_must_be_a_positive_number(copy, eps):
    d = json.loads((copy / PREPROCESSOR_FILE).read_text())
    step = next(s for s in d["steps"] if s["registry_name"] == "normalizer_processor")
    step["config"]["eps"] = eps
    (copy / PREPROCESSOR_FILE).write_text(json.dumps(d))
    expect_error(
        copy, StatsError, rf"normalizer_processor: eps: got {eps!r}".replace("(", r"\(").replace(")", r"\)")
    )


@pytest.mark.parametrize(
    ("filename", "key", "match"),
    [
        (PREPROCESSOR_FILE, "features", r"normalizer_processor: config lacks \['features'\]"),
        (PREPROCESSOR_FILE, "norm_map", r"normalizer_processor: config lacks \['norm_map'\]"),
        (POSTPROCESSOR_FILE, "features", r"unnormalizer_processor: config lacks \['features'\]"),
        (POSTPROCESSOR_FILE, "action", r"unnormalizer_processor.features: got \[\], expected 'action'"),
    ],
)
def test_a_normalizer_step_without_features_does_not_pass_values_through(copy, filename, key, match):
    d = json.loads((copy / filename).read_text())
    step = next(s for s in d["steps"] if s["registry_name"].endswith("normalizer_processor"))
    if key == "action":
        del step["config"]["features"]["action"]
    else:
        del step["config"][key]
    (copy / filename).write_text(json.dumps(d))
    expect_error(copy, ProcessorError, match)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (["a", "b"], r"rename_map: got \['a', 'b'\], expected a mapping"),
        ({"a": 1}, r"rename_map: got \{'a': 1\}"),
    ],
)
def test_processor_rename_map_must_map_names(copy, value, match):
    d = json.loads((copy / PREPROCESSOR_FILE).read_text())
    d["steps"][0]["config"]["rename_map"] = value
    (copy / PREPROCESSOR_FILE).write_text(json.dumps(d))
    expect_error(copy, ProcessorError, match)


def test_dataset_stats_are_validated_too():
    cfg = preset("micro")
    bad = {"action": {"mean": [0.0, 0.0], "std": [1.0, -2.0]}}
    with pytest.raises(StatsError, match=r"\['action'\]\['std'\] is negative"):
        make_pre_post_processors(cfg, dataset_stats=bad)


def test_negative_std_no_longer_flips_actions():
    feat = {"action": PolicyFeature(preset("micro").action_feature.type, (2,))}
    with pytest.raises(StatsError, match="negative"):
        Normalizer(feat, {"ACTION": "MEAN_STD"}, {"action": {"mean": [0.0, 0.0], "std": [-1.0, -1.0]}})


# -- camera frames that cannot be letterboxed ------------------------------------------------------------


def test_a_strip_image_is_an_error_not_a_torch_failure():
    with pytest.raises(ProcessorError, match=r"image: got 1 x 4096 pixels .* leaves 0 x 512"):
        resize_with_pad(torch.zeros(1, 3, 1, 4096), 512, 512)


# -- property: malformed configs load with the same values or fail naming a field -------------------------

_VALID = preset("micro").to_dict()
_NAMES = sorted(_VALID)
_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**15), max_value=10**15),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=3), st.floats()), max_size=4),
    st.dictionaries(st.text(max_size=6), st.one_of(st.integers(-3, 3), st.text(max_size=5)), max_size=3),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    drops=st.lists(st.sampled_from(_NAMES), max_size=3),
    replaces=st.dictionaries(st.sampled_from(_NAMES), _JUNK, max_size=3),
)
def test_malformed_configs_never_raise_anything_but_a_named_smolvla_error(drops, replaces):
    d = json.loads(json.dumps(_VALID))
    for name in drops:
        d.pop(name, None)
    d.update(replaces)
    try:
        cfg = SmolVLAConfig.from_dict(json.loads(json.dumps(d, allow_nan=True)))
    except SmolVLAError as e:
        touched = set(drops) | set(replaces) | {"n_action_steps", "chunk_size", "input_features"}
        assert any(name in str(e) for name in touched), str(e)
        return
    out = cfg.to_dict()
    for name in _NAMES:
        if name in d:
            assert out[name] == d[name] or (out[name] != out[name] and d[name] != d[name]), name
        else:
            assert name in OPTIONAL_FIELDS and out[name] == SmolVLAConfig().to_dict()[name], name
