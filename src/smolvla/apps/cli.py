"""The `smolvla` command. Flags follow LeRobot's (`--policy.path=DIR`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import Counter
from typing import Any

import numpy as np
import torch

from smolvla.config import PRESETS, TASK, preset
from smolvla.policy import SmolVLAPolicy
from smolvla.processing import sample_observation, unit_stats


def parameter_report(policy: SmolVLAPolicy) -> dict[str, Any]:
    """Parameter counts per part, total and trainable."""
    m = policy.model
    vlm = m.vlm_with_expert.vlm
    parts = {
        "vision_tower": vlm.model.vision_model,
        "connector": vlm.model.connector,
        "embed_tokens": vlm.model.text_model.embed_tokens,
        "text_layers": vlm.model.text_model.layers,
        "lm_head (unused)": vlm.lm_head,
        "action_expert": m.vlm_with_expert.lm_expert,
    }
    counts = {k: sum(p.numel() for p in v.parameters()) for k, v in parts.items()}
    counts["projections"] = sum(
        p.numel()
        for mod in (
            m.state_proj,
            m.action_in_proj,
            m.action_out_proj,
            m.action_time_mlp_in,
            m.action_time_mlp_out,
        )
        for p in mod.parameters()
    )
    return {
        "total": sum(p.numel() for p in policy.parameters()),
        "trainable": sum(p.numel() for p in policy.parameters() if p.requires_grad),
        "parts": counts,
    }


def info(path: str, as_json: bool = False) -> dict[str, Any]:
    policy = SmolVLAPolicy.from_pretrained(path)
    cfg = policy.config
    dtypes = Counter(str(d).removeprefix("torch.") for d in policy._file_dtypes.values())
    folder = policy.pretrained_path
    processors = sorted(p.name for p in folder.glob("policy_*processor*")) if folder else []
    report = {
        "checkpoint": str(folder),
        "vlm_model_name": cfg.vlm_model_name,
        "cameras": {k: list(f.shape) for k, f in cfg.image_features.items()},
        "state": list(cfg.state_feature.shape) if cfg.state_feature else None,
        "action": list(cfg.action_feature.shape),
        "chunk_size": cfg.chunk_size,
        "n_action_steps": cfg.n_action_steps,
        "num_steps": cfg.num_steps,
        "layers": {"vlm": cfg.num_vlm_layers, "expert": cfg.n_expert_layers},
        "normalization": {k: v.value for k, v in cfg.normalization_mapping.items()},
        "parameters": parameter_report(policy),
        "file_dtypes": dict(dtypes),
        "processor_files": processors,
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return report
    print(f"SmolVLA checkpoint {report['checkpoint']}")
    print(
        f"  backbone      {cfg.vlm_model_name} ({cfg.num_vlm_layers} layers kept), "
        f"expert {cfg.n_expert_layers} layers"
    )
    for k, shape in report["cameras"].items():
        print(f"  camera        {k} {shape}")
    print(f"  state         {report['state']}   action {report['action']}")
    print(
        f"  chunk         {cfg.chunk_size} actions, {cfg.n_action_steps} executed per call, "
        f"{cfg.num_steps} denoising steps"
    )
    par = report["parameters"]
    print(f"  parameters    {par['total']:,} total, {par['trainable']:,} trainable")
    for k, n in par["parts"].items():
        print(f"    {k:<18}{n:>14,}")
    print(f"  file dtypes   {dict(dtypes)}")
    print(f"  processors    {', '.join(processors) or 'none (make them with the dataset stats)'}")
    return report


def demo(policy_path: str | None, preset_name: str, seed: int, device: str) -> torch.Tensor:
    """Runs a policy end to end on a sample observation: raw frames -> preprocessor -> chunk -> actions."""
    from smolvla.processing import make_pre_post_processors

    torch.manual_seed(seed)
    if policy_path:
        policy = SmolVLAPolicy.from_pretrained(policy_path, device=device)
        pre, post = make_pre_post_processors(policy.config, pretrained_path=policy_path, device=device)
        source = policy_path
    else:
        cfg = dataclasses.replace(preset(preset_name), load_vlm_weights=False)
        policy = SmolVLAPolicy.from_config(cfg).to(device).eval()
        pre, post = make_pre_post_processors(cfg, dataset_stats=unit_stats(cfg), device=device)
        source = f"preset '{preset_name}', random weights (untrained: the actions are noise-shaped)"
    cfg = policy.config
    obs = sample_observation(cfg, seed)
    t0 = time.perf_counter()
    batch = pre(obs)
    chunk = policy.predict_action_chunk(batch)
    actions = post(chunk)[0]  # (chunk_size, action_dim)
    dt = time.perf_counter() - t0
    print(f"policy: {source}")
    cams = [f"{k} {v.shape}" for k, v in obs.items() if k.startswith("observation.images")]
    print(f"observation: cameras {cams}")
    print(f"task: {obs[TASK]!r}")
    print(f"action chunk {tuple(actions.shape)} in {dt:.3f} s ({cfg.num_steps} denoising steps):")
    np.set_printoptions(precision=3, suppress=True, linewidth=120)
    rows = actions.numpy()
    for i in list(range(min(5, len(rows)))) + ([len(rows) - 1] if len(rows) > 5 else []):
        print(f"  t={i:>3}  {rows[i]}")
    return actions


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smolvla", description="SmolVLA: train, evaluate and run VLA policies.")
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("info", help="describe a checkpoint: features, cameras, parameters, dtypes")
    i.add_argument("checkpoint", help="checkpoint folder or hub repo id")
    i.add_argument("--json", action="store_true", help="print JSON")
    d = sub.add_parser("demo", help="run a policy on a sample observation and print its action chunk")
    d.add_argument("--policy.path", dest="policy_path", help="checkpoint folder or hub repo id")
    d.add_argument(
        "--policy.preset",
        dest="preset",
        default="tiny",
        choices=sorted(PRESETS),
        help="preset to build with random weights when no path is given",
    )
    d.add_argument("--policy.device", dest="device", default="cpu")
    d.add_argument("--seed", type=int, default=0)
    for name, (_, text) in PASSTHROUGH.items():  # listed in --help; their own parsers take the flags
        sub.add_parser(name, help=text, add_help=False)
    return p


def _record(argv: list[str]) -> None:
    if argv[:1] != ["metaworld"]:
        raise ValueError(f"record: got source {argv[:1]}, expected `smolvla record metaworld ...`")
    from smolvla.envs.record import main as record_main

    record_main(argv[1:])


def _dataset(argv: list[str]) -> None:
    from smolvla.data.tools import main as dataset_main

    dataset_main(argv)


def _quickstart(argv: list[str]) -> None:
    from smolvla.apps.quickstart import main as quickstart_main

    quickstart_main(argv)


def _serve(argv: list[str]) -> None:
    from smolvla.serving.server import main as serve_main

    serve_main(argv)


def _deploy(argv: list[str]) -> None:
    from smolvla.apps.deploy import main as deploy_main

    deploy_main(argv)


def _train(argv: list[str]) -> None:
    from smolvla.train.loop import main as train_main

    train_main(argv)


def _eval(argv: list[str]) -> None:
    from smolvla.eval import main as eval_main

    eval_main(argv)


def _bench(argv: list[str]) -> None:
    from smolvla.apps.bench import main as bench_main

    bench_main(argv)


# Commands with LeRobot-style `--a.b=value` flags (argparse would mangle them): argv goes straight through.
PASSTHROUGH = {
    "quickstart": (
        _quickstart,
        "record Meta-World demos, train the tiny preset, evaluate: the whole loop on a CPU",
    ),
    "train": (_train, "train or fine-tune a policy: --policy.path=... --dataset.repo_id=... --steps=N"),
    "eval": (_eval, "evaluate a policy in Meta-World: success per task and bucket, chart, videos"),
    "bench": (
        _bench,
        "speed and memory here: s/chunk per inference mode, training step; --compare to LeRobot",
    ),
    "dataset": (_dataset, "look at a dataset: info DIR | show DIR --episode K --output F.mp4 | stats DIR"),
    "record": (
        _record,
        "record demonstrations into a LeRobotDataset: record metaworld --tasks ... --output DIR",
    ),
    "serve": (_serve, "serve a policy over WebSocket (openpi's protocol): --policy.path=DIR --port 8000"),
    "deploy": (
        _deploy,
        "drive the Meta-World robot through the server in real time: deploy sim --mode sync,async",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in PASSTHROUGH:
        run, _ = PASSTHROUGH[argv[0]]
        try:
            run(argv[1:])
        except (ValueError, FileNotFoundError, RuntimeError) as e:  # ours say what is wrong
            print(f"smolvla {argv[0]}: error: {e}", file=sys.stderr)
            return 2
        return 0
    args = _parser().parse_args(argv)
    try:
        if args.command == "info":
            info(args.checkpoint, args.json)
        elif args.command == "demo":
            demo(args.policy_path, args.preset, args.seed, args.device)
    except (ValueError, FileNotFoundError) as e:  # our errors say what is wrong: show them, not a traceback
        print(f"smolvla {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
