"""LeRobot's SmolVLA training step in each fine-tuning mode, for `smolvla bench train --compare`.

Runs under LeRobot's interpreter (never ours; nothing here imports smolvla):

    python bench_lerobot_modes.py train --ref .../bench_smolvla_ref.py --mode lora --cams 3 --bs 4

The reference script (../shared/tools/lerobot_reference/bench_smolvla_ref.py) times LeRobot's default,
expert-only training; this one reuses its policy builder, batch and measuring loop (so both are
timed the same way) and sets the mode up as LeRobot's own code does:
- lora: `policy.wrap_with_peft` with LeRobot's SmolVLA targets (r=16), as `lerobot-train --peft.*`;
- vlm: `train_expert_only=False` (the VLM's text layers train, the vision tower stays frozen);
- full: `train_expert_only=False, freeze_vision_encoder=False`.
It prints one `RESULT {json}` line in the reference script's train format.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=["train"])
    ap.add_argument("--ref", required=True, help="LeRobot's reference bench script")
    ap.add_argument("--mode", choices=["expert", "lora", "vlm", "full"], required=True)
    ap.add_argument("--cams", type=int, default=2)
    ap.add_argument("--bs", type=int, default=4)
    ap.add_argument("--n-lang", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-runs", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()

    spec = importlib.util.spec_from_file_location("bench_smolvla_ref", args.ref)
    ref = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(Path(args.ref).resolve().parent))
    spec.loader.exec_module(ref)
    import torch

    torch.set_num_threads(args.threads)
    args.vlm_dir, args.num_steps, args.prec = ref.DEFAULT_VLM_DIR, 10, "fp32"
    policy, _ = ref.build_policy(args, args.cams)
    if args.mode in ("vlm", "full"):
        # LeRobot applies both switches in the model's constructor (set_requires_grad): set them, rebuild
        policy.config.train_expert_only = False
        policy.config.freeze_vision_encoder = args.mode != "full"
        cfg = policy.config
        torch.manual_seed(0)
        policy = type(policy)(cfg)
    if args.mode == "lora":
        policy.config.pretrained_path = "random-weights"  # wrap_with_peft wants a base to name
        policy = policy.wrap_with_peft(peft_cli_overrides={"r": 16})
    policy.train()
    opt_cfg = policy.config.get_optimizer_preset()
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=opt_cfg.lr, betas=opt_cfg.betas, eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay
    )
    batch = ref.make_batch(args.bs, args.cams, args.n_lang, with_action=True)
    ref.reset_hwm()
    rss_before = ref.rss_kb()

    def once() -> tuple[float, float, float, float]:
        t0 = time.perf_counter()
        loss, _ = policy.forward(dict(batch))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, opt_cfg.grad_clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1, time.perf_counter() - t2, float(loss.detach())

    ref.wait_quiet()
    warm, runs = ref.measure(once, args.warmup, args.runs, args.max_runs)
    summ = ref.summarize([(r[2][0] + r[2][1], r[1], None) for r in runs])
    use = [r for r in runs if r[1] < 0.15] if summ["n_clean"] >= 3 else runs
    res = {
        "case": f"train mode={args.mode} cams={args.cams} bs={args.bs}",
        "threads": torch.get_num_threads(),
        "warmup_step_s": [round(w, 3) for w in warm],
        "fwd_bwd": summ,
        "median_fwd_s": statistics.median(r[2][0] for r in use),
        "median_bwd_s": statistics.median(r[2][1] for r in use),
        "median_fwd_bwd_s": summ["median_s"],
        "median_clip_adamw_s": statistics.median(r[2][2] for r in use),
        "losses": [round(r[2][3], 5) for r in runs],
        "rss_before_runs_MiB": rss_before / 1024,
        "peak_rss_during_runs_MiB": ref.hwm_kb() / 1024,
        "trainable_params": sum(p.numel() for p in params),
        "torch": torch.__version__,
    }
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
