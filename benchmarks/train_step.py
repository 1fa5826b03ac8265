"""Training-step time, samples/s and peak memory of a SmolVLA preset on this machine, random weights.

    python benchmarks/train_step.py --preset tiny --batch 64 --steps 10
    python benchmarks/train_step.py --preset base --cams 2 --batch 4 --steps 3

One JSON line per case: median seconds per step (forward + backward + AdamW) after a warm-up step,
split into forward and backward, samples/s, trainable parameters and the process's peak RSS. Each case
runs in its own process so peak RSS belongs to it alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def run_case(
    preset_name: str, cams: int | None, batch: int, steps: int, threads: int, lang: int, overrides: dict
) -> dict:
    from smolvla.config import FeatureType, PolicyFeature, preset
    from smolvla.policy import SmolVLAPolicy

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = preset(preset_name)
    if cams is not None:
        shape = next(iter(cfg.image_features.values())).shape
        feats = {k: v for k, v in cfg.input_features.items() if v.type != FeatureType.VISUAL}
        feats.update(
            {
                f"observation.images.camera{i + 1}": PolicyFeature(FeatureType.VISUAL, shape)
                for i in range(cams)
            }
        )
        cfg = dataclasses.replace(cfg, input_features=feats)
    cfg = dataclasses.replace(cfg, load_vlm_weights=False, **overrides)
    policy = SmolVLAPolicy(cfg).train()
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optimizer_lr, betas=cfg.optimizer_betas, eps=cfg.optimizer_eps)
    g = torch.Generator().manual_seed(0)
    data = {k: torch.rand(batch, *f.shape, generator=g) for k, f in cfg.image_features.items()}
    data["observation.state"] = torch.randn(batch, cfg.state_feature.shape[0], generator=g)
    data["observation.language.tokens"] = torch.randint(3, 250, (batch, lang), generator=g)
    data["observation.language.attention_mask"] = torch.ones(batch, lang, dtype=torch.bool)
    data["action"] = torch.randn(batch, cfg.chunk_size, cfg.action_feature.shape[0], generator=g)
    data["action_is_pad"] = torch.zeros(batch, cfg.chunk_size, dtype=torch.bool)

    def step() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        loss, _ = policy(data)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, cfg.optimizer_grad_clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1, time.perf_counter() - t0

    step()  # warm-up
    samples = [step() for _ in range(steps)]
    total = statistics.median(s[2] for s in samples)
    return {
        "case": "train_step",
        "impl": "smolvla",
        "preset": preset_name,
        "cams": len(cfg.image_features),
        "batch": batch,
        "threads": threads,
        "lang_tokens": lang,
        "steps": steps,
        "overrides": overrides,
        "s_per_step_median": round(total, 4),
        "forward_s_median": round(statistics.median(s[0] for s in samples), 4),
        "backward_s_median": round(statistics.median(s[1] for s in samples), 4),
        "samples_per_s": round(batch / total, 1),
        "params": sum(p.numel() for p in policy.parameters()),
        "trainable": sum(p.numel() for p in params),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "torch": torch.__version__,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--cams", type=int, default=None, help="cameras (default: the preset's)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--lang", type=int, default=16, help="language tokens")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON", help="config overrides")
    p.add_argument("--in-process", action="store_true", help="run the case here (used by the driver)")
    args = p.parse_args()
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.in_process:
        print(
            json.dumps(
                run_case(args.preset, args.cams, args.batch, args.steps, args.threads, args.lang, overrides)
            )
        )
        return
    cmd = [sys.executable, __file__, "--in-process", *sys.argv[1:]]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
