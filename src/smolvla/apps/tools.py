"""The small commands: `info` (a checkpoint), `demo` (a policy on a sample observation), `dataset`
(info | show | stats | check), each with its config dataclass (the flags) and the function that runs it."""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smolvla.config import TASK, preset
from smolvla.errors import SmolVLAError
from smolvla.policy import SmolVLAPolicy
from smolvla.processing import sample_observation, unit_stats


@dataclass(frozen=True)
class CheckpointRef:
    path: str | None = None  # a checkpoint folder, a hub repo id, or an export folder (info only)


@dataclass(frozen=True)
class InfoConfig:
    """Describe a checkpoint (features, cameras, parameters, dtypes) or an export (graphs, sizes, check)."""

    policy: CheckpointRef = field(default_factory=CheckpointRef)
    json: bool = False  # print JSON instead of the table
    # also the table --policy.backend=auto chooses from here: s/chunk and action error per backend x
    # precision (measured once per machine and policy shape, then read from the cache)
    speed: bool = False
    refresh: bool = False  # with --speed: measure again instead of reading the cache


@dataclass(frozen=True)
class AdapterRef:
    path: str | None = None  # the LoRA adapter checkpoint: a folder or hub repo id (its base is named inside)


@dataclass(frozen=True)
class MergeConfig:
    """Fold a LoRA adapter (smolvla's or LeRobot's) into its base: a plain checkpoint for every loader."""

    policy: AdapterRef = field(default_factory=AdapterRef)
    output_dir: str | None = None  # the merged checkpoint to write (a new or empty folder)


def run_merge(cfg: MergeConfig) -> None:
    from smolvla.policy import merge_checkpoint

    path = _required(cfg.policy.path, "policy.path", "an adapter checkpoint folder or hub repo id")
    out = _required(cfg.output_dir, "output_dir", "the folder to write the merged checkpoint into")
    t0 = time.perf_counter()
    merge_checkpoint(path, out)
    print(f"wrote {out}: {path} merged into its base in {time.perf_counter() - t0:.1f} s")


@dataclass(frozen=True)
class DemoPolicyConfig:
    path: str | None = None  # a checkpoint folder or hub repo id (None: --policy.preset, random weights)
    preset: str = "tiny"  # the preset built with random weights when no path is given
    device: str = "cpu"  # cpu, cuda, mps


@dataclass(frozen=True)
class DemoConfig:
    """Run a policy on a sample observation and print its action chunk."""

    policy: DemoPolicyConfig = field(default_factory=DemoPolicyConfig)
    seed: int = 0  # seeds the sample observation, the noise and random weights


@dataclass(frozen=True)
class DatasetRef:
    repo_id: str | None = None  # a dataset folder or a hub repo id


@dataclass(frozen=True)
class DatasetInfoConfig:
    """Episodes, frames, fps, features, cameras, tasks and stats of a dataset."""

    dataset: DatasetRef = field(default_factory=DatasetRef)
    json: bool = False  # print JSON instead of the summary


@dataclass(frozen=True)
class DatasetShowConfig:
    """An episode as an MP4 (cameras and instruction) and a PNG of its state and actions."""

    dataset: DatasetRef = field(default_factory=DatasetRef)
    episode_index: int = 0  # the episode to show
    output_path: str | None = None  # the MP4 to write (the PNG goes beside it)


@dataclass(frozen=True)
class DatasetStatsConfig:
    """Recompute a dataset's meta/stats.json from its data."""

    dataset: DatasetRef = field(default_factory=DatasetRef)


@dataclass(frozen=True)
class DatasetCheckConfig:
    """Check a dataset against its own metadata: every file present and readable, the metadata true to
    the data. Exits 0 when it is sound, 2 listing every problem otherwise."""

    dataset: DatasetRef = field(default_factory=DatasetRef)
    full: bool = False  # also decode every frame of every camera (slow); quick: files, headers, rows
    json: bool = False  # print JSON instead of the summary


class DatasetProblemsError(SmolVLAError, ValueError):
    """`smolvla dataset check` found problems (listed on stdout)."""


class MissingFlagError(SmolVLAError, ValueError):
    """A flag the command cannot run without."""


def _required(value: Any, flag: str, what: str) -> Any:
    if value is None:
        raise MissingFlagError(f"--{flag} is required: {what}")
    return value


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


def info(path: str, as_json: bool = False, echo: bool = True) -> dict[str, Any]:
    """Prints what a checkpoint holds (or its JSON; nothing without `echo`) and returns it."""
    policy = SmolVLAPolicy.from_pretrained(path, merge_adapter=False)
    adapter = None
    if policy.adapter is not None:
        spec = policy.adapter
        from smolvla.model.lora import lora_layers

        layers = lora_layers(policy)
        adapter = {
            "base": policy.adapter_base,
            "r": spec.r,
            "lora_alpha": spec.lora_alpha,
            "layers": len(layers),
            "modules_to_save": list(spec.modules_to_save),
            "parameters": sum(p.numel() for p in policy.parameters() if p.requires_grad),
        }
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
        "adapter": adapter,
    }
    if as_json or not echo:
        if echo:
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
    if adapter is not None:
        print(
            f"  LoRA adapter  r={adapter['r']} alpha={adapter['lora_alpha']} on {adapter['layers']} layers"
            f"{', in full: ' + ', '.join(adapter['modules_to_save']) if adapter['modules_to_save'] else ''}, "
            f"{adapter['parameters']:,} parameters; base {adapter['base']} (loaders merge it; "
            "smolvla merge writes the merged checkpoint)"
        )
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


def run_info(cfg: InfoConfig) -> None:
    from smolvla.runtime.select import is_export

    path = _required(cfg.policy.path, "policy.path", "a checkpoint folder, hub repo id or export folder")
    # with --json and --speed, one JSON document holds both
    echo = not (cfg.json and cfg.speed)
    report = (export_info if is_export(path) else info)(path, cfg.json, echo)
    if cfg.speed:
        table = speed_table(path, cfg.refresh, quiet=cfg.json)
        if cfg.json:
            print(json.dumps({**report, "speed": table}, indent=2))


def export_info(path: str, as_json: bool = False, echo: bool = True) -> dict[str, Any]:
    """What an export folder holds: cameras, graphs, sizes, its check against PyTorch."""
    from smolvla.runtime.exported import ExportedPolicy

    meta = ExportedPolicy.read_metadata(path)
    if as_json or not echo:
        if echo:
            print(json.dumps(meta, indent=2))
        return meta
    print(f"SmolVLA export {path} (ONNX opset {meta['opset']}, batch {meta['batch_size']})")
    for k, shape in meta["cameras"].items():
        print(f"  camera        {k} {shape}")
    print(f"  state         [{meta['state_dim']}]   action [{meta['action_dim']}]")
    print(
        f"  chunk         {meta['chunk_size']} actions, {meta['n_action_steps']} executed per call, "
        f"{meta['num_steps']} denoising steps, {meta['language']['max_length']} language tokens"
    )
    for form, graphs in meta["graphs"].items():
        size = sum(
            n
            for f, n in meta["files"].items()
            if f.rsplit(".", 1)[0] in {g.rsplit(".", 1)[0] for g in graphs.values()} | set(graphs.values())
        )
        print(f"  {form:<13} {', '.join(graphs.values())} ({size / 2**30:.2f} GB)")
    for name, r in (meta.get("check") or {}).get("results", {}).items():
        print(f"  check         {name}: max |error| {r['max_abs']:.2e}, mean {r['mean_abs']:.2e}")
    return meta


def speed_table(path: str, refresh: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Prints the table `--policy.backend=auto` chooses from (measuring it if this machine has not)."""
    from smolvla.runtime.select import measure

    table = measure(path, "auto", "auto", refresh=refresh, log=(lambda _: None) if quiet else print)
    if quiet:
        return table
    m = table["machine"]
    print(
        f"\nspeed here: {m['cpu']} ({' '.join(m['flags'])}), {m['threads']} threads; measured "
        f"{table['measured_at']}; bound: mean |error| <= {table['max_error']} vs {table['reference']}"
    )
    print(f"  {'backend':<12} {'precision':<9} {'s/chunk':>8} {'error mean':>11} {'error max':>10}")
    for r in table["rows"]:
        mark = "  <- auto" if (r["backend"], r["precision"]) == tuple(table["choice"].values()) else ""
        bound = "" if r["within_bound"] else "  (over the bound)"
        print(
            f"  {r['backend']:<12} {r['precision']:<9} {r['s_per_chunk']:>8.3f} {r['error_mean']:>11.2e} "
            f"{r['error_max']:>10.2e}{mark}{bound}"
        )
    return table


def run_demo(cfg: DemoConfig) -> None:
    demo(cfg.policy.path, cfg.policy.preset, cfg.seed, cfg.policy.device)


def run_dataset_info(cfg: DatasetInfoConfig) -> None:
    from smolvla.data.tools import info as dataset_info
    from smolvla.data.tools import print_info

    summary = dataset_info(_required(cfg.dataset.repo_id, "dataset.repo_id", "a dataset folder"))
    print(json.dumps(summary, indent=2)) if cfg.json else print_info(summary)


def run_dataset_show(cfg: DatasetShowConfig) -> None:
    from smolvla.data.tools import show

    root = _required(cfg.dataset.repo_id, "dataset.repo_id", "a dataset folder")
    output = _required(cfg.output_path, "output_path", "the MP4 to write, e.g. episode.mp4")
    mp4, png = show(root, cfg.episode_index, output)
    print(f"wrote {mp4} and {png}")


def run_dataset_stats(cfg: DatasetStatsConfig) -> None:
    from smolvla.data.format import STATS_PATH
    from smolvla.data.tools import recompute_stats

    root = _required(cfg.dataset.repo_id, "dataset.repo_id", "a dataset folder")
    recompute_stats(root)
    print(f"wrote {Path(root) / STATS_PATH}")


def run_dataset_check(cfg: DatasetCheckConfig) -> None:
    from smolvla.data.check import check_dataset

    root = _required(cfg.dataset.repo_id, "dataset.repo_id", "a dataset folder")
    report = check_dataset(root, full=cfg.full)
    mode = "full" if cfg.full else "quick"
    if cfg.json:
        print(json.dumps({**dataclasses.asdict(report), "ok": report.ok}, indent=2))
    else:
        print(f"{root}: {mode} check, {'sound' if report.ok else f'{len(report.problems)} problem(s)'}")
        print(f"  episodes        {report.episodes}")
        print(f"  frames          {report.frames}")
        print(f"  files checked   {report.files_checked}")
        decoded = "" if cfg.full else " (--full=true decodes every frame)"
        print(f"  frames decoded  {report.frames_decoded}{decoded}")
        for problem in report.problems:
            print(f"problem: {problem}")
    if not report.ok:
        # exit 2, as any bad input: a script or CI step can stop on an unsound dataset
        raise DatasetProblemsError(f"{root}: {len(report.problems)} problem(s) found by the {mode} check")
