"""LoRA on the policy: PEFT's matching rules, what a wrapped layer computes, merging (exact, fp32 over a bf16
base), the adapter files' refusals, `smolvla merge` and `smolvla info`, and every loader and inference mode
on an adapter checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smolvla.apps.cli import main
from smolvla.errors import SmolVLAError
from smolvla.model.lora import DEFAULT_TARGETS, LoraLinear, LoraSpec, lora_layers
from smolvla.policy import SmolVLAPolicy
from smolvla.processing import make_pre_post_processors, unit_stats
from tests.conftest import make_batch


def names(policy: SmolVLAPolicy) -> list[str]:
    return sorted(lora_layers(policy))


def test_matching_follows_peft(micro_policy):
    """A string is a full-name regex, a list holds name suffixes, modules_to_save wins over targets,
    all-linear leaves lm_head alone."""
    p = micro_policy
    p.add_adapter(LoraSpec(), base=None)
    assert names(p) == sorted(
        [
            "model.action_in_proj",
            "model.action_out_proj",
            "model.action_time_mlp_in",
            "model.action_time_mlp_out",
            *[f"model.vlm_with_expert.lm_expert.layers.{i}.self_attn.{w}_proj" for i in (0, 1) for w in "qv"],
            "model.state_proj",
        ]
    )
    p.merge_adapter()
    p.add_adapter(LoraSpec(target_modules=["q_proj"], modules_to_save=("lm_expert.layers.1",)), base=None)
    # a suffix list reaches the VLM's q_proj too; layer 1 of the expert is trained in full instead
    assert "model.vlm_with_expert.vlm.model.text_model.layers.0.self_attn.q_proj" in names(p)
    assert "model.vlm_with_expert.lm_expert.layers.1.self_attn.q_proj" not in names(p)
    assert all(t.requires_grad for t in p.model.vlm_with_expert.lm_expert.layers[1].parameters())
    p.merge_adapter()
    p.add_adapter(LoraSpec(target_modules="all-linear"), base=None)
    assert (
        "model.vlm_with_expert.vlm.lm_head" not in names(p) and len(names(p)) == 40
    )  # 14 text, 6 vision, 1 connector, 14 expert, 5 projections


def test_an_adapter_computes_peft_s_update_and_merges_exactly(micro_policy, micro_cfg):
    torch.manual_seed(0)
    p = micro_policy.eval()
    batch = make_batch(micro_cfg)
    noise = torch.randn(2, micro_cfg.chunk_size, micro_cfg.max_action_dim)
    before = p.predict_action_chunk(batch, noise)
    p.add_adapter(LoraSpec(r=2, lora_alpha=6), base=None)
    layer = p.model.state_proj
    assert isinstance(layer, LoraLinear) and layer.scaling == 3.0
    assert torch.equal(p.predict_action_chunk(batch, noise), before)  # B starts at zero
    with torch.no_grad():
        for m in lora_layers(p).values():
            m.lora_B.weight.normal_(0, 0.1)
    x = torch.randn(3, layer.in_features)
    want = (
        x @ layer.base_layer.weight.T
        + layer.base_layer.bias
        + 3.0 * (x @ layer.lora_A.weight.T) @ layer.lora_B.weight.T
    )
    torch.testing.assert_close(layer(x), want)
    adapted = p.predict_action_chunk(batch, noise)
    assert (adapted - before).abs().max() > 1e-3
    p.merge_adapter()
    assert not lora_layers(p) and p.adapter is None
    torch.testing.assert_close(p.predict_action_chunk(batch, noise), adapted, rtol=0, atol=1e-5)


def test_rslora_and_patterns(micro_policy):
    spec = LoraSpec(
        r=4, lora_alpha=8, use_rslora=True, rank_pattern={"state_proj": 2}, alpha_pattern={"q_proj": 1}
    )
    micro_policy.add_adapter(spec, base=None)
    layers = lora_layers(micro_policy)
    assert (
        layers["model.state_proj"].lora_A.out_features == 2
        and layers["model.state_proj"].scaling == 8 / 2**0.5
    )
    q = layers["model.vlm_with_expert.lm_expert.layers.0.self_attn.q_proj"]
    assert q.scaling == 1 / 2.0 and q.lora_A.out_features == 4


@pytest.fixture
def adapter(micro_ckpt, tmp_path) -> Path:
    """An adapter on the micro checkpoint with non-zero B, saved with its processors."""
    p = SmolVLAPolicy.from_pretrained(micro_ckpt)
    p.add_adapter(LoraSpec(r=4, lora_alpha=8, init_lora_weights=False), base=str(micro_ckpt))
    out = tmp_path / "adapter"
    p.save_pretrained(out)
    pre, post = make_pre_post_processors(p.config, dataset_stats=unit_stats(p.config))
    pre.save(out)
    post.save(out)
    return out


def test_adapter_files_are_peft_s(adapter, micro_ckpt):
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["base_model_name_or_path"] == str(micro_ckpt)
    assert cfg["target_modules"] == DEFAULT_TARGETS and cfg["bias"] == "none" and cfg["use_dora"] is False
    tensors = load_file(adapter / "adapter_model.safetensors")
    assert len(tensors) == 2 * 9 and all(t.dtype == torch.float32 for t in tensors.values())
    assert json.loads((adapter / "config.json").read_text())["use_peft"] is True


@pytest.mark.parametrize(
    "change,match",
    [
        ({"peft_type": "IA3"}, r"peft_type is 'IA3'; this loader supports 'LORA' only"),
        ({"use_dora": True}, r"use_dora is True"),
        ({"bias": "all"}, r"bias is 'all'"),
        ({"r": 0}, r"LoRA r: got 0"),
        ({"r": 8}, r"state dict does not match.*lora_A.weight has shape|shape \(4, "),
        ({"target_modules": "model\\.state_proj"}, r"16 unexpected"),
        ({"base_model_name_or_path": None}, r"base_model_name_or_path is None"),
        ({"base_model_name_or_path": "/nowhere/base"}, r"not found"),
    ],
)
def test_bad_adapter_files_are_named(adapter, change, match):
    path = adapter / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(SmolVLAError, match=match):
        SmolVLAPolicy.from_pretrained(adapter)


def test_merge_command_info_and_every_inference_mode(adapter, micro_ckpt, tmp_path, capsys):
    batch = make_batch(SmolVLAPolicy.from_pretrained(micro_ckpt).config)
    kept = SmolVLAPolicy.from_pretrained(adapter, merge_adapter=False)
    cfg = kept.config
    noise = torch.randn(2, cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(1))
    want = kept.predict_action_chunk(batch, noise)
    base = SmolVLAPolicy.from_pretrained(micro_ckpt).predict_action_chunk(batch, noise)
    assert (want - base).abs().max() > 1e-3

    assert main(["info", f"--policy.path={adapter}"]) == 0
    text = capsys.readouterr().out
    assert "LoRA adapter  r=4 alpha=8 on 9 layers" in text and str(micro_ckpt) in text

    out = tmp_path / "merged"
    assert main(["merge", f"--policy.path={adapter}", f"--output_dir={out}"]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert (out / "policy_preprocessor.json").is_file()
    assert json.loads((out / "config.json").read_text())["use_peft"] is False
    merged = SmolVLAPolicy.from_pretrained(out)
    torch.testing.assert_close(merged.predict_action_chunk(batch, noise), want, rtol=0, atol=1e-5)
    tol = {"fp32": 1e-5, "bf16": 0.05, "int8": 0.05}
    for mode, t in tol.items():
        for path in (out, adapter):  # the merged checkpoint, and the adapter merged on load
            got = SmolVLAPolicy.from_pretrained(path, inference_mode=mode).predict_action_chunk(batch, noise)
            assert (got - want).abs().max() <= t, (mode, path.name)
    assert main(["merge", f"--policy.path={micro_ckpt}", f"--output_dir={tmp_path / 'x'}"]) == 2
    assert "holds no LoRA adapter" in capsys.readouterr().err
    assert main(["merge", f"--policy.path={adapter}", f"--output_dir={out}"]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_a_bf16_base_merges_into_fp32_weights(adapter, micro_ckpt, tmp_path):
    """A bf16 checkpoint (as smolvla_base) keeps bf16 where nothing changed; the merged layers save in
    fp32, which holds the small update bf16 would round away."""
    p = SmolVLAPolicy.from_pretrained(micro_ckpt)
    p._file_dtypes = dict.fromkeys(p._file_dtypes, torch.bfloat16)
    with torch.no_grad():
        for t in p.parameters():
            t.copy_(t.to(torch.bfloat16))
    p.add_adapter(LoraSpec(r=2, init_lora_weights=False), base=str(micro_ckpt))
    p.merge_adapter()
    p.save_pretrained(tmp_path / "m")
    saved = load_file(tmp_path / "m" / "model.safetensors")
    assert saved["model.state_proj.weight"].dtype == torch.float32
    assert saved["model.vlm_with_expert.lm_expert.layers.0.self_attn.k_proj.weight"].dtype == torch.bfloat16


def test_exported_backend_takes_an_adapter(adapter, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from smolvla.runtime.select import load_policy
    from tests.runtime.test_select import obs

    monkeypatch.setenv("SMOLVLA_CACHE", str(tmp_path / "cache"))
    torch_p = load_policy(adapter, "torch")
    ort = load_policy(adapter, "onnxruntime", log=lambda _: None)
    o = obs(3)
    noise = torch_p.noise(0)
    assert abs(ort.predict_chunk(o, noise) - torch_p.predict_chunk(o, noise)).max() <= 1e-4
