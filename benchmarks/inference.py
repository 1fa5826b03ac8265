"""Inference latency and peak memory of a SmolVLA preset on this machine, random weights.

    python benchmarks/inference.py --preset base --cams 2 --runs 5

Prints one JSON line per case: median / min seconds per chunk (after a warm-up), the split into
vision + prefix and denoising, and the process's peak RSS. Each case runs in its own process so peak
RSS belongs to that case alone.
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


def run_case(preset_name: str, cams: int, runs: int, dtype: str, threads: int, lang: int) -> dict:
    from smolvla.config import FeatureType, PolicyFeature, preset
    from smolvla.model.vla import make_att_2d_masks
    from smolvla.policy import SmolVLAPolicy

    torch.set_num_threads(threads)
    cfg = preset(preset_name)
    cam_shape = next(iter(cfg.image_features.values())).shape
    feats = {k: v for k, v in cfg.input_features.items() if v.type != FeatureType.VISUAL}
    feats.update(
        {
            f"observation.images.camera{i + 1}": PolicyFeature(FeatureType.VISUAL, cam_shape)
            for i in range(cams)
        }
    )
    cfg = dataclasses.replace(cfg, input_features=feats, load_vlm_weights=False)
    t0 = time.perf_counter()
    policy = SmolVLAPolicy(cfg).eval()
    build_s = time.perf_counter() - t0
    if dtype == "bfloat16":
        policy.set_precision(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    batch = {k: torch.rand(1, *f.shape, generator=g) for k, f in cfg.image_features.items()}
    batch["observation.state"] = torch.randn(1, cfg.state_feature.shape[0], generator=g)
    batch["observation.language.tokens"] = torch.randint(3, 1000, (1, lang), generator=g)
    batch["observation.language.attention_mask"] = torch.ones(1, lang, dtype=torch.bool)
    model = policy.model

    def timed() -> tuple[float, float]:
        t0 = time.perf_counter()
        with torch.no_grad():
            images, masks, tokens, tmask, state = policy._prepare_inputs(batch)
            prefix = model.embed_prefix(images, masks, tokens, tmask, state)
            cache = model.vlm_with_expert.prefill(
                prefix.embs, make_att_2d_masks(prefix.pad, prefix.ar), prefix.pad.cumsum(1) - 1
            )
            t1 = time.perf_counter()
            s = cfg.chunk_size
            x = torch.randn(1, s, cfg.max_action_dim, generator=g)
            mask = make_att_2d_masks(torch.ones(1, s, dtype=torch.bool), torch.ones(1, s, dtype=torch.long))
            pos = prefix.pad.sum(1, keepdim=True) + torch.arange(s)[None]
            for step in range(cfg.num_steps):
                t = torch.full((1,), 1.0 - step / cfg.num_steps)
                x = x - model.velocity(x, t, cache, prefix.pad, mask, pos) / cfg.num_steps
        return t1 - t0, time.perf_counter() - t1

    timed()  # warm-up
    samples = [timed() for _ in range(runs)]
    totals = [a + b for a, b in samples]
    return {
        "case": "inference",
        "impl": "smolvla",
        "preset": preset_name,
        "cams": cams,
        "dtype": dtype,
        "threads": threads,
        "lang_tokens": lang,
        "runs": runs,
        "s_per_chunk_median": round(statistics.median(totals), 4),
        "s_per_chunk_min": round(min(totals), 4),
        "prefix_s_median": round(statistics.median(a for a, _ in samples), 4),
        "denoise_s_median": round(statistics.median(b for _, b in samples), 4),
        "build_s": round(build_s, 2),
        "params": sum(p.numel() for p in policy.parameters()),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "torch": torch.__version__,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="base")
    p.add_argument("--cams", type=int, nargs="+", default=[2])
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--lang", type=int, default=48, help="language tokens")
    p.add_argument("--in-process", action="store_true", help="run one case here (used by the driver)")
    args = p.parse_args()
    if args.in_process:
        print(
            json.dumps(run_case(args.preset, args.cams[0], args.runs, args.dtype[0], args.threads, args.lang))
        )
        return
    for dtype in args.dtype:
        for cams in args.cams:
            cmd = [
                sys.executable,
                __file__,
                "--in-process",
                "--preset",
                args.preset,
                "--cams",
                str(cams),
                "--dtype",
                dtype,
                "--runs",
                str(args.runs),
                "--threads",
                str(args.threads),
                "--lang",
                str(args.lang),
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
