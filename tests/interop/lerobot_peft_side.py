"""LeRobot's half of the LoRA adapter exchange. Runs under LeRobot's interpreter with PEFT (never ours).

    python lerobot_peft_side.py load ADAPTER_DIR IO_DIR      an adapter smolvla wrote, loaded as LeRobot's
                                                             make_policy loads one (policies/factory.py)
    python lerobot_peft_side.py make BASE_DIR OUT_DIR IO_DIR  LeRobot's own adapter on BASE_DIR
                                                             (wrap_with_peft, then saved as its
                                                             train_utils.save_checkpoint saves it)

Either way the policy then runs each case of IO_DIR/inputs.* through LeRobot's processors and
`predict_action_chunk` with the given noise, into IO_DIR/outputs.safetensors, and IO_DIR/report.json says
how loading went (PEFT's warnings about missing or unexpected adapter keys included). No network.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

# lerobot_side refuses every network connection on import; its case loop serves both scripts
sys.path.insert(0, str(Path(__file__).resolve().parent))
from lerobot_side import run_cases


def load(adapter: Path, io: Path) -> dict:
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from peft import PeftConfig, PeftModel

    cfg = PreTrainedConfig.from_pretrained(str(adapter))
    cfg.pretrained_path = adapter
    report = {"use_peft": cfg.use_peft}
    # policies/factory.py::make_policy, its `cfg.pretrained_path and cfg.use_peft` branch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_config = PeftConfig.from_pretrained(str(adapter))
        policy = SmolVLAPolicy.from_pretrained(peft_config.base_model_name_or_path, config=cfg)
        policy = PeftModel.from_pretrained(policy, str(adapter), config=peft_config, is_trainable=True)
    report["warnings"] = [str(w.message) for w in caught if "adapter" in str(w.message).lower()]
    report["base"] = peft_config.base_model_name_or_path
    report["lora_modules"] = sorted(
        n.removeprefix("base_model.model.").removesuffix(".lora_A")
        for n, _ in policy.named_modules()
        if n.endswith(".lora_A")
    )
    policy.eval()
    pre, post = make_pre_post_processors(cfg, pretrained_path=str(adapter))
    run_cases(policy, pre, post, io)
    return report


def make(base: Path, out: Path, io: Path) -> dict:
    import torch
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    policy = SmolVLAPolicy.from_pretrained(str(base))
    policy.config.pretrained_path = base  # what --policy.path sets in lerobot_train
    overrides = {
        "method_type": "LORA",
        "target_modules": None,  # SmolVLA's default targets
        "full_training_modules": ["state_proj"],
        "init_type": None,
        "r": 4,
        "lora_alpha": 16,
    }
    policy = policy.wrap_with_peft(peft_cli_overrides=overrides)
    # As if trained: every adapter tensor (B starts at zero) and the fully trained module move.
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    # common/train_utils.py::save_checkpoint with cfg.peft set
    policy.save_pretrained(str(out))
    policy.config.save_pretrained(str(out))
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(base))
    pre.save_pretrained(str(out))
    post.save_pretrained(str(out))
    policy.eval()
    run_cases(policy, pre, post, io)
    return {"trainable": sorted(n for n, p in policy.named_parameters() if p.requires_grad)}


if __name__ == "__main__":
    mode, *paths = sys.argv[1:]
    paths = [Path(p).resolve() for p in paths]
    report = load(*paths) if mode == "load" else make(*paths)
    (paths[-1] / "report.json").write_text(json.dumps(report, indent=2))
