"""LeRobot-format processor files: save/load round trip, a hand-written LeRobot fixture, errors, steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from smolvla.config import MICRO_BACKBONE, OBS_TOKEN_MASK, OBS_TOKENS, SMOLVLM2_500M, SmolVLAConfig, preset
from smolvla.processing import (
    MissingStatsError,
    PolicyPostprocessor,
    PolicyPreprocessor,
    ProcessorError,
    make_pre_post_processors,
    save_byte_tokenizer,
)
from smolvla.processing.pipeline import (
    POSTPROCESSOR_STATE_FILE,
    PREPROCESSOR_STATE_FILE,
    rename,
    to_batch,
)
from tests.test_hub import make_cache


@pytest.fixture
def cfg() -> SmolVLAConfig:
    return preset("micro")


def micro_stats() -> dict:
    return {
        "observation.state": {
            "mean": [0.0, 1.0, 2.0],
            "std": [1.0, 2.0, 4.0],
            "min": [-1.0, -1.0, -1.0],
            "max": [1.0, 3.0, 5.0],
            "count": [10.0],
        },
        "action": {"mean": [1.0, -1.0], "std": [2.0, 0.5], "q01": [0.0, 0.0], "q99": [1.0, 1.0]},
        "observation.images.camera1": {
            "mean": [[[0.5]], [[0.5]], [[0.5]]],
            "std": [[[0.2]], [[0.2]], [[0.2]]],
        },
    }


def observation(cfg: SmolVLAConfig) -> dict:
    g = torch.Generator().manual_seed(0)
    obs = {k: torch.rand(*f.shape, generator=g) for k, f in cfg.image_features.items()}
    obs["observation.state"] = torch.tensor([1.0, 1.0, 1.0])
    obs["task"] = "pick the cube"
    return obs


def test_new_pipelines(cfg: SmolVLAConfig) -> None:
    pre, post = make_pre_post_processors(cfg, dataset_stats=micro_stats())
    out = pre(observation(cfg))
    assert out["observation.state"].shape == (1, 3)
    torch.testing.assert_close(out["observation.state"], torch.tensor([[1.0, 0.0, -0.25]]))
    assert out["observation.images.camera1"].shape == (1, 3, 16, 16)  # VISUAL: IDENTITY, only batched
    tokens, mask = out[OBS_TOKENS], out[OBS_TOKEN_MASK]
    assert tokens.dtype == torch.int64 and mask.dtype == torch.bool
    assert (
        tokens.shape == (1, 12) and tokens[0, -1] == ord("b") + 3
    )  # "pick the cube\n" cut to "pick the cub"
    assert out["task"] == ["pick the cube\n"]
    action = post(torch.zeros(1, 4, 2))
    assert action.device.type == "cpu"
    torch.testing.assert_close(action, torch.tensor([1.0, -1.0]).expand(1, 4, 2))


def test_pre_then_post_is_identity_on_action(cfg: SmolVLAConfig) -> None:
    pre, post = make_pre_post_processors(cfg, dataset_stats=micro_stats())
    action = torch.randn(2, 4, 2)
    obs = {**observation(cfg), "action": action, "task": ["a", "b"]}
    obs["observation.state"] = torch.zeros(2, 3)
    torch.testing.assert_close(post(pre(obs)["action"]), action)


def test_round_trip(cfg: SmolVLAConfig, tmp_path: Path) -> None:
    pre, post = make_pre_post_processors(
        cfg, dataset_stats=micro_stats(), rename_map={"obs.cam": "observation.images.camera1"}
    )
    pre.save(tmp_path / "a")
    post.save(tmp_path / "a")
    pre2 = PolicyPreprocessor.load(tmp_path / "a")
    post2 = PolicyPostprocessor.load(tmp_path / "a")
    pre2.save(tmp_path / "b")
    post2.save(tmp_path / "b")
    for f in ("policy_preprocessor.json", "policy_postprocessor.json"):
        a, b = (tmp_path / "a" / f).read_bytes(), (tmp_path / "b" / f).read_bytes()
        assert a == b and not a.endswith(b"\n")  # json.dump(indent=2), as LeRobot
    for f in (PREPROCESSOR_STATE_FILE, POSTPROCESSOR_STATE_FILE):
        sa, sb = load_file(str(tmp_path / "a" / f)), load_file(str(tmp_path / "b" / f))
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        # the WHOLE stats dict is in both files, flat and float32
        assert set(sa) == {
            "observation.state.mean",
            "observation.state.std",
            "observation.state.min",
            "observation.state.max",
            "observation.state.count",
            "action.mean",
            "action.std",
            "action.q01",
            "action.q99",
            "observation.images.camera1.mean",
            "observation.images.camera1.std",
        }
        assert all(t.dtype == torch.float32 for t in sa.values())
    obs = observation(cfg)
    o1, o2 = pre(obs), pre2(obs)
    assert o1.keys() == o2.keys() and all(
        torch.equal(o1[k], o2[k]) for k in o1 if isinstance(o1[k], torch.Tensor)
    )


def test_saved_layout(cfg: SmolVLAConfig, tmp_path: Path) -> None:
    pre, post = make_pre_post_processors(cfg, dataset_stats=micro_stats(), device="cpu")
    pre.save(tmp_path)
    post.save(tmp_path)
    d = json.loads((tmp_path / "policy_preprocessor.json").read_text())
    assert d["name"] == "policy_preprocessor"
    assert [s["registry_name"] for s in d["steps"]] == [
        "rename_observations_processor",
        "to_batch_processor",
        "smolvla_new_line_processor",
        "tokenizer_processor",
        "device_processor",
        "normalizer_processor",
    ]
    assert d["steps"][3]["config"] == {
        "max_length": 12,
        "task_key": "task",
        "padding_side": "right",
        "padding": "longest",
        "truncation": True,
        "tokenizer_name": MICRO_BACKBONE,
    }
    assert d["steps"][4]["config"] == {"device": "cpu", "float_dtype": None}
    norm = d["steps"][5]
    assert norm["state_file"] == "policy_preprocessor_step_5_normalizer_processor.safetensors"
    assert norm["config"]["eps"] == 1e-8
    assert norm["config"]["norm_map"] == {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}
    assert list(norm["config"]["features"]) == [
        "observation.images.camera1",
        "observation.images.camera2",
        "observation.state",
        "action",
    ]
    p = json.loads((tmp_path / "policy_postprocessor.json").read_text())
    assert [s["registry_name"] for s in p["steps"]] == ["unnormalizer_processor", "device_processor"]
    assert p["steps"][0]["state_file"] == "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
    assert list(p["steps"][0]["config"]["features"]) == ["action"]  # LeRobot: output features only
    assert p["steps"][1]["config"] == {"device": "cpu", "float_dtype": None}


# -- a LeRobot-written checkpoint, by hand ------------------------------------------------------------

LEROBOT_PRE = """{
  "name": "policy_preprocessor",
  "steps": [
    {"registry_name": "rename_observations_processor",
     "config": {"rename_map": {"observation.images.top": "observation.images.camera1"}}},
    {"registry_name": "to_batch_processor", "config": {}},
    {"registry_name": "smolvla_new_line_processor", "config": {}},
    {"registry_name": "tokenizer_processor", "config": {"max_length": 48, "task_key": "task",
      "padding_side": "right", "padding": "max_length", "truncation": true,
      "tokenizer_name": "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"}},
    {"registry_name": "device_processor", "config": {"device": "cuda", "float_dtype": null}},
    {"registry_name": "normalizer_processor", "config": {"eps": 1e-08,
      "features": {"observation.state": {"type": "STATE", "shape": [6]},
                   "observation.images.camera1": {"type": "VISUAL", "shape": [3, 256, 256]},
                   "action": {"type": "ACTION", "shape": [6]}},
      "norm_map": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}},
     "state_file": "policy_preprocessor_step_5_normalizer_processor.safetensors"}
  ]
}"""

LEROBOT_POST = """{
  "name": "policy_postprocessor",
  "steps": [
    {"registry_name": "unnormalizer_processor", "config": {"eps": 1e-08,
      "features": {"action": {"type": "ACTION", "shape": [6]}},
      "norm_map": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}},
     "state_file": "policy_postprocessor_step_0_unnormalizer_processor.safetensors"},
    {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": null}}
  ]
}"""


def lerobot_stats() -> dict[str, torch.Tensor]:
    return {
        "observation.state.mean": torch.arange(6.0),
        "observation.state.std": torch.full((6,), 2.0),
        "action.mean": torch.full((6,), 10.0),
        "action.std": torch.full((6,), 3.0),
        "observation.images.camera1.mean": torch.full((3, 1, 1), 0.5),
    }


@pytest.fixture
def lerobot_ckpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "policy_preprocessor.json").write_text(LEROBOT_PRE)
    (ckpt / "policy_postprocessor.json").write_text(LEROBOT_POST)
    save_file(lerobot_stats(), str(ckpt / PREPROCESSOR_STATE_FILE))
    save_file(lerobot_stats(), str(ckpt / POSTPROCESSOR_STATE_FILE))
    # SmolVLM2's tokenizer, stood in for by the byte tokenizer, in an offline HF cache.
    cache = tmp_path / "hf-cache"
    snap = make_cache(cache, SMOLVLM2_500M, files={})
    save_byte_tokenizer(snap)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return ckpt


def test_lerobot_fixture_loads(lerobot_ckpt: Path) -> None:
    pre, post = make_pre_post_processors(preset("base"), pretrained_path=lerobot_ckpt, device="cpu")
    assert pre.device == "cpu" and pre.rename_map == {"observation.images.top": "observation.images.camera1"}
    out = pre(
        {
            "observation.state": np.ones(6, dtype=np.float32),
            "observation.images.top": np.zeros((3, 8, 8)),
            "observation.images.top_padding_mask": np.array([True]),
            "task": "go",
        }
    )
    torch.testing.assert_close(out["observation.state"], ((torch.ones(6) - torch.arange(6.0)) / 2)[None])
    assert out["observation.images.camera1"].shape == (1, 3, 8, 8)
    assert "observation.images.camera1_padding_mask" in out
    assert out[OBS_TOKENS].shape == (1, 48)  # padding max_length
    assert out[OBS_TOKENS][0, :4].tolist() == [ord("g") + 3, ord("o") + 3, ord("\n") + 3, 2]
    torch.testing.assert_close(post(torch.ones(1, 6)), torch.full((1, 6), 13.0))


def test_lerobot_fixture_with_tokenizer_artifact(lerobot_ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Newer LeRobot saves the tokenizer into the checkpoint and names it by relative path.
    text = LEROBOT_PRE.replace('"HuggingFaceTB/SmolVLM2-500M-Video-Instruct"', '"tokenizer"')
    (lerobot_ckpt / "policy_preprocessor.json").write_text(text)
    save_byte_tokenizer(lerobot_ckpt / "tokenizer")
    monkeypatch.setenv("HF_HUB_CACHE", str(lerobot_ckpt / "empty-cache"))
    pre = PolicyPreprocessor.load(lerobot_ckpt, device="cpu")
    assert pre.tokenizer is not None and pre.tokenizer.vocab_size == 320


def test_missing_stats(lerobot_ckpt: Path, cfg: SmolVLAConfig) -> None:
    # smolvla_base-like stats: keyed by pretraining-dataset prefixes, nothing for observation.state.
    save_file(
        {"so100.buffer.action.mean": torch.zeros(6), "so100.buffer.action.std": torch.ones(6)},
        str(lerobot_ckpt / PREPROCESSOR_STATE_FILE),
    )
    with pytest.raises(MissingStatsError) as e:
        PolicyPreprocessor.load(lerobot_ckpt)
    assert "policy_preprocessor.json" in str(e.value) and "'so100.buffer.action'" in str(e.value)
    # Fine-tuning: dataset stats replace the saved ones (renamed to the policy's names).
    ds = {
        "observation.state": {"mean": [0.0] * 6, "std": [1.0] * 6},
        "observation.images.top": {"mean": [0.5, 0.5, 0.5], "std": [1.0, 1.0, 1.0]},
        "action": {"mean": [0.0] * 6, "std": [1.0] * 6},
    }
    pre, _ = make_pre_post_processors(
        preset("base"),
        pretrained_path=lerobot_ckpt,
        dataset_stats=ds,
        rename_map={"observation.images.top": "observation.images.camera1"},
    )
    assert "observation.images.camera1" in pre.normalizer.stats
    with pytest.raises(MissingStatsError, match=r"observation\.state"):
        make_pre_post_processors(cfg, dataset_stats=None)


def test_unknown_step(lerobot_ckpt: Path) -> None:
    (lerobot_ckpt / "policy_postprocessor.json").write_text(
        LEROBOT_POST.replace("unnormalizer_processor", "fancy_step", 1)
    )
    with pytest.raises(
        ProcessorError, match=r"policy_postprocessor.json: step 0 has unknown registry_name 'fancy_step'"
    ):
        PolicyPostprocessor.load(lerobot_ckpt)


def test_missing_and_corrupt_state_file(lerobot_ckpt: Path) -> None:
    (lerobot_ckpt / POSTPROCESSOR_STATE_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ProcessorError, match=f"{POSTPROCESSOR_STATE_FILE}: not a readable safetensors"):
        PolicyPostprocessor.load(lerobot_ckpt)
    (lerobot_ckpt / POSTPROCESSOR_STATE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=f"state_file .*{POSTPROCESSOR_STATE_FILE} not found"):
        PolicyPostprocessor.load(lerobot_ckpt)


def test_missing_task(cfg: SmolVLAConfig) -> None:
    pre, _ = make_pre_post_processors(cfg, dataset_stats=micro_stats())
    obs = observation(cfg)
    del obs["task"]
    with pytest.raises(ProcessorError, match="observation has no 'task'"):
        pre(obs)


def test_rename_with_suffixes() -> None:
    batch = {"a": 1, "a_is_pad": 2, "a_padding_mask": 3, "b": 4}
    assert rename(batch, {"a": "x"}) == {"x": 1, "x_is_pad": 2, "x_padding_mask": 3, "b": 4}
    assert rename(batch, {}) == batch


def test_to_batch() -> None:
    out = to_batch(
        {
            "observation.state": torch.zeros(3),
            "observation.environment_state": torch.zeros(2),
            "observation.image": torch.zeros(3, 4, 4),
            "observation.images.c": torch.zeros(3, 4, 4),
            "action": torch.zeros(2),
            "task": "t",
            "index": torch.tensor(5),
            "task_index": torch.tensor(1),
            "other": torch.zeros(3),
        }
    )
    assert out["observation.state"].shape == (1, 3) and out["observation.environment_state"].shape == (1, 2)
    assert out["observation.image"].shape == (1, 3, 4, 4) and out["observation.images.c"].shape == (
        1,
        3,
        4,
        4,
    )
    assert out["action"].shape == (1, 2) and out["task"] == ["t"]
    assert out["index"].shape == (1,) and out["task_index"].shape == (1,) and out["other"].shape == (3,)
    batched = {
        "observation.state": torch.zeros(2, 3),
        "observation.images.c": torch.zeros(2, 3, 4, 4),
        "task": ["a", "b"],
    }
    out = to_batch(batched)
    assert all(out[k] is batched[k] for k in batched)
