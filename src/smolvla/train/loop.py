"""`train(cfg)`: fine-tune or train SmolVLA on a LeRobot dataset, on one process or many (torchrun).

Determinism is by construction, so that resuming and multi-process training reproduce a single run:
- the order of samples is a permutation drawn from (seed, epoch); a run's data position is just the
  number of batches consumed;
- the flow-matching noise and time of every sample, and its augmentation, are drawn from generators
  seeded by (seed, step), for the whole global batch, of which each process takes its slice;
- the loss is normalized by the global number of valid action entries, so that DDP's gradient average
  equals the single-process gradient.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from smolvla.config import ACTION, ACTION_IS_PAD, OBS_STATE, FeatureType, PolicyFeature, SmolVLAConfig, preset
from smolvla.errors import SmolVLAError
from smolvla.hardware import native_bf16
from smolvla.io import write_atomic
from smolvla.policy import SmolVLAPolicy
from smolvla.train.config import TrainConfig, default_output_dir, resume_changes
from smolvla.train.ema import EMA, EMA_MODEL_DIR
from smolvla.train.optim import make_optimizer, make_scheduler
from smolvla.train.state import (
    LAST,
    PRETRAINED,
    TRAINING_STATE,
    checkpoint_step,
    complete_checkpoints,
    last_checkpoint,
    load_training_state,
    resume_checkpoint,
    save_checkpoint,
)

log = logging.getLogger(__name__)


class TrainingError(SmolVLAError, RuntimeError):
    """Training cannot start or cannot go on (bad setup, diverged loss)."""


# --------------------------------------------------------------------------------------------------
# Setup


def _dist() -> tuple[int, int]:
    """(rank, world size); initializes torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.policy.device:
        return torch.device(cfg.policy.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def training_precision(policy: SmolVLAPolicy, precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `--precision` ('auto': bf16 where it runs in hardware, see `native_bf16`;
    'bf16' anywhere; 'fp32': None). Under bf16 autocast the frozen parts are also stored in bf16 where
    that changes no value (a bf16 checkpoint): autocast would otherwise cast those weights again at
    every forward (it caches casts only of weights that require grad), and they take half the memory."""
    if not (precision == "bf16" or (precision == "auto" and native_bf16(device))):
        return None
    policy.set_precision(torch.bfloat16, frozen_only=True, exact_only=True)
    return torch.bfloat16


def dataset_features(ds: Any) -> tuple[dict[str, PolicyFeature], dict[str, PolicyFeature]]:
    """A dataset's features as the policy sees them: cameras (3, H, W), state, action."""
    inputs: dict[str, PolicyFeature] = {}
    outputs: dict[str, PolicyFeature] = {}
    for key, ft in ds.features.items():
        key = ds.rename_map.get(key, key) if hasattr(ds, "rename_map") else key
        shape = tuple(ft["shape"])
        if ft["dtype"] in ("video", "image"):
            h, w, c = shape
            inputs[key] = PolicyFeature(FeatureType.VISUAL, (c, h, w))
        elif key == OBS_STATE:
            inputs[key] = PolicyFeature(FeatureType.STATE, shape)
        elif key == ACTION:
            outputs[key] = PolicyFeature(FeatureType.ACTION, shape)
    if ACTION not in outputs:
        raise TrainingError(f"the dataset has no {ACTION!r} feature (features: {sorted(ds.features)})")
    return inputs, outputs


def policy_config(cfg: TrainConfig, ds_inputs: dict, ds_outputs: dict) -> SmolVLAConfig:
    """The policy config of this run, checked against the dataset before anything trains."""
    if cfg.policy.path:
        from smolvla.hub import resolve_dir

        base = SmolVLAConfig.load(resolve_dir(cfg.policy.path, allow_patterns=["*.json"]) / "config.json")
        base = cfg.policy_config(base)
        # LeRobot's rule: keep the checkpoint's cameras, take the dataset's outputs. The state comes
        # from the dataset too: its width is padded to max_state_dim, so any width up to it fits.
        cams = {k: f for k, f in base.input_features.items() if f.type == FeatureType.VISUAL}
        inputs = {**cams, **{k: f for k, f in ds_inputs.items() if f.type != FeatureType.VISUAL}}
        base = dataclasses.replace(base, input_features=inputs, output_features=ds_outputs)
        missing = [k for k in cams if k not in ds_inputs]
        if len(missing) > base.empty_cameras:
            extra = sorted(k for k, f in ds_inputs.items() if f.type == FeatureType.VISUAL and k not in cams)
            raise TrainingError(
                f"the dataset does not provide the checkpoint's cameras {missing} (it has "
                f"{extra or 'no other camera'}). Map the dataset's keys onto the checkpoint's with "
                f"--rename_map, e.g. --rename_map='{json.dumps(dict(zip(extra, missing, strict=False)))}', "
                f"or let up to N cameras be absent with --policy.empty_cameras=N"
            )
        return base
    base = dataclasses.replace(
        preset(cfg.policy.preset), input_features=ds_inputs, output_features=ds_outputs
    )
    explicit = set(cfg.policy.overrides)
    pcfg = cfg.policy_config(base)
    if not pcfg.load_vlm_weights:
        # A random backbone learns nothing frozen: train everything unless told otherwise.
        thaw = {k: False for k in ("freeze_vision_encoder", "train_expert_only") if k not in explicit}
        pcfg = dataclasses.replace(pcfg, **thaw)
    return pcfg


class EpochSampler(torch.utils.data.Sampler[int]):
    """This process's share of the (seed, epoch) permutations, from batch `start` of `epoch` on, endless.

    The global batch k is permutation[k*G:(k+1)*G] (G = per-process batch x processes); process r takes
    its r-th slice, so the union over processes is exactly the single-process batch."""

    def __init__(
        self, n: int, batch: int, rank: int, world: int, seed: int, epoch: int, start: int = 0
    ) -> None:
        self.n, self.batch, self.rank, self.world = n, batch, rank, world
        self.seed, self.epoch, self.start = seed, epoch, start

    def batches_per_epoch(self) -> int:
        return self.n // (self.batch * self.world)  # drop the last partial global batch

    def __iter__(self):
        # One endless stream across epochs, so one DataLoader (and its worker processes) serves the
        # whole run: no worker restart and no empty prefetch queue at each epoch boundary.
        gb = self.batch * self.world
        epoch, start = self.epoch, self.start
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            for k in range(start, self.batches_per_epoch()):
                lo = k * gb + self.rank * self.batch
                yield from perm[lo : lo + self.batch]
            epoch, start = epoch + 1, 0


# --------------------------------------------------------------------------------------------------
# The loop


def train(cfg: TrainConfig, progress: bool = True, stop_at: int | None = None) -> Path:
    """Runs training; returns the output folder (checkpoints, metrics.jsonl, curves PNG).

    `stop_at`: checkpoint and stop after that step, as an interrupted run would (`--resume=true` goes
    on): for time-boxed sessions, and for the test that resuming is exact."""
    from smolvla.data import ImageAugment, LeRobotDataset
    from smolvla.data.check import check_dataset, check_mode
    from smolvla.processing import make_pre_post_processors
    from smolvla.processing.tokenizer import distinct_length

    rank, world = _dist()
    device = _device(cfg)
    out = Path(cfg.output_dir) if cfg.output_dir else default_output_dir(cfg)
    # Rank 0 decides first and may clear a dead run's files; the others look after it has.
    resume_from = _check_output_dir(out, cfg, rank) if rank == 0 else None
    if world > 1:
        dist.barrier()
    if rank != 0:
        resume_from = _check_output_dir(out, cfg, rank)
    if resume_from is not None:
        saved = TrainConfig.from_dict(
            json.loads((resume_from / PRETRAINED / "train_config.json").read_text())
        )
        changed = resume_changes(saved, cfg)
        if changed:
            raise TrainingError(
                f"--resume=true continues the run in {out}, which cannot change "
                + ", ".join(f"--{c}" for c in changed)
                + "; leave them out (they come from its train_config.json) or start a new run"
            )
        cfg = dataclasses.replace(cfg, output_dir=str(out))

    torch.manual_seed(cfg.seed)
    # Before anything is built from it: metadata that contradicts the data (a camera shape the videos do
    # not have) would otherwise end up in the trained checkpoint.
    check_dataset(cfg.dataset.repo_id, full=check_mode(cfg.dataset.check)).raise_for_problems()
    probe = LeRobotDataset(cfg.dataset.repo_id, episodes=_episodes(cfg), rename_map=cfg.rename_map or None)
    ds_inputs, ds_outputs = dataset_features(probe)
    pcfg = policy_config(cfg, ds_inputs, ds_outputs)
    ds = LeRobotDataset(
        cfg.dataset.repo_id,
        episodes=_episodes(cfg),
        chunk_size=pcfg.chunk_size,
        rename_map=cfg.rename_map or None,
    )
    if ds.stats is None:
        raise TrainingError(
            f"{cfg.dataset.repo_id}: no meta/stats.json; compute it with `smolvla dataset stats`"
        )

    if resume_from is not None:
        with _loading(resume_from, out):
            # an adapter stays apart from its base: it is what trains
            policy = SmolVLAPolicy.from_pretrained(resume_from / PRETRAINED, merge_adapter=False)
            pre, post = make_pre_post_processors(
                policy.config, pretrained_path=resume_from / PRETRAINED, device=str(device)
            )
    elif cfg.policy.path:
        policy = SmolVLAPolicy.from_pretrained(cfg.policy.path, **cfg.policy.overrides)
        policy = _with_config(policy, pcfg)
        if cfg.peft is not None:
            wrapped = policy.add_adapter(cfg.peft.spec(), base=base_name(cfg.policy.path))
            n = sum(p.numel() for p in policy.parameters() if p.requires_grad)
            log.info("LoRA on %d layers: %s parameters train", len(wrapped), f"{n:,}")
        # The dataset's stats replace the checkpoint's (LeRobot's rule); its tokenizer settings are kept.
        has_processors = (policy.pretrained_path / "policy_preprocessor.json").is_file()
        pre, post = make_pre_post_processors(
            pcfg,
            pretrained_path=cfg.policy.path if has_processors else None,
            dataset_stats=ds.stats,
            device=str(device),
        )
    else:
        policy = SmolVLAPolicy.from_config(pcfg)
        pre, post = make_pre_post_processors(pcfg, dataset_stats=ds.stats, device=str(device))
    policy.to(device).train()
    policy.set_gradient_checkpointing(cfg.policy.gradient_checkpointing)
    amp = training_precision(policy, cfg.precision, device)
    pcfg = policy.config
    if pre.tokenizer is not None and pre.truncation:
        need = distinct_length(pre.tokenizer, list(ds.meta.tasks))
        if need > pre.max_length:
            raise TrainingError(
                f"tokenizer_max_length {pre.max_length} truncates some of the dataset's {len(ds.meta.tasks)} "
                f"instructions into the same tokens; pass --policy.tokenizer_max_length={need} (or more)"
            )

    opt = make_optimizer(list(policy.parameters()), pcfg)
    sched = make_scheduler(opt, pcfg, cfg.steps)
    # The average lives on rank 0 only (DDP keeps every rank's weights equal), as LeRobot's does.
    ema = EMA(cfg.ema, policy) if cfg.ema.enable and rank == 0 else None
    step, epoch, batch_in_epoch = 0, 0, 0
    if resume_from is not None:
        with _loading(resume_from, out):
            info = load_training_state(resume_from, opt, sched)
            if ema is not None:
                ema.load(resume_from / TRAINING_STATE)
        step, epoch, batch_in_epoch = info["step"], info["epoch"], info["batch_in_epoch"]
    model: torch.nn.Module = policy
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            policy, device_ids=[device.index] if device.type == "cuda" else None
        )
    augment = ImageAugment(cfg.dataset.augment_config()) if cfg.dataset.augment else None
    params = [p for p in policy.parameters() if p.requires_grad]

    def save_model(folder: Path) -> None:
        policy.save_pretrained(folder)
        pre.save(folder)
        post.save(folder)
        (folder / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    def save_ema(ckpt: Path) -> None:  # inside the checkpoint being built, so it lands with it
        with ema.applied():
            save_model(ckpt / EMA_MODEL_DIR)
        ema.save(ckpt / TRAINING_STATE)

    sampler = EpochSampler(len(ds), cfg.batch_size, rank, world, cfg.seed, epoch, batch_in_epoch)
    per_epoch = sampler.batches_per_epoch()
    if per_epoch == 0:
        raise TrainingError(
            f"--batch_size {cfg.batch_size} x {world} processes is larger than the dataset ({len(ds)} frames)"
        )
    it = iter(
        torch.utils.data.DataLoader(
            ds,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.num_workers,
            drop_last=True,
            pin_memory=device.type == "cuda",
        )
    )

    metrics_file = out / "metrics.jsonl"
    logger = _Logger(out, cfg, enabled=rank == 0, resumed_at=step if resume_from is not None else None)
    bar = tqdm(
        total=cfg.steps, initial=step, disable=not (progress and rank == 0), unit="step", dynamic_ncols=True
    )
    window: list[float] = []
    t_window, samples_window = time.perf_counter(), 0
    t_start = time.perf_counter()
    while step < cfg.steps:
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for micro in range(cfg.gradient_accumulation_steps):
            if batch_in_epoch >= per_epoch:  # the sampler's stream has moved on to the next epoch
                epoch, batch_in_epoch = epoch + 1, 0
            raw = next(it)
            batch_in_epoch += 1
            gstep = step * cfg.gradient_accumulation_steps + micro
            raw = _augment(raw, augment, ds.camera_keys, cfg.seed, gstep, rank) if augment else raw
            batch = pre(raw)
            noise, t = _noise_and_time(cfg, pcfg, gstep, rank, world, device)
            is_pad = batch[ACTION_IS_PAD]
            a = pcfg.action_feature.shape[0]
            count = (~is_pad).sum() * a
            total = count.clone()
            if world > 1:
                dist.all_reduce(total)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss, info = model(batch, noise=noise, time=t)
            # sum over this process's entries / global entries, x world because DDP averages gradients
            scaled = loss * count / total.clamp(min=1) * world / cfg.gradient_accumulation_steps
            if not torch.isfinite(loss):
                episodes = sorted(set(raw["episode_index"].tolist()))
                raise TrainingError(
                    f"loss is {loss.item()} at step {step}; the batch holds episodes {episodes}"
                )
            scaled.backward()
            logged = loss.detach() * count / total.clamp(min=1)  # this process's share of the global mean
            if world > 1:
                dist.all_reduce(logged)
            loss_sum += float(logged) / cfg.gradient_accumulation_steps
        grad_norm = torch.nn.utils.clip_grad_norm_(params, pcfg.optimizer_grad_clip_norm)
        opt.step()
        sched.step()
        if ema is not None:
            ema.update()
        step += 1
        window.append(loss_sum)
        samples_window += cfg.batch_size * world * cfg.gradient_accumulation_steps
        bar.update(1)
        if step % cfg.log_freq == 0 or step == cfg.steps:
            dt = time.perf_counter() - t_window
            rec = {
                "step": step,
                "loss": sum(window) / len(window),
                "lr": opt.param_groups[0]["lr"],
                "grad_norm": float(grad_norm),
                "samples_per_s": samples_window / dt,
                "epoch": epoch,
                "elapsed_s": time.perf_counter() - t_start,
                **({"ema_decay": ema.decay} if ema is not None else {}),
            }
            logger.log(rec)
            bar.set_postfix(
                loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", sps=f"{rec['samples_per_s']:.0f}"
            )
            window, t_window, samples_window = [], time.perf_counter(), 0
        stopping = stop_at is not None and step >= stop_at
        saving = step % cfg.save_freq == 0 or step == cfg.steps or stopping
        # Evaluation has its own schedule: it needs the weights on disk (the simulator workers load
        # them), so a step that evaluates without a checkpoint saves the model alone, under eval/.
        evaluating = bool(cfg.env.type and cfg.eval_freq) and (step % cfg.eval_freq == 0 or step == cfg.steps)
        if saving or evaluating:
            if rank == 0:
                if saving:
                    ckpt = save_checkpoint(
                        out,
                        step,
                        save_model,
                        opt,
                        sched,
                        {"epoch": epoch, "batch_in_epoch": batch_in_epoch, "world": world},
                        also=save_ema if ema is not None else None,
                    )
                    model_dir = ckpt / (
                        EMA_MODEL_DIR if ema is not None and cfg.ema.use_for_eval else PRETRAINED
                    )
                else:
                    model_dir = out / "eval" / f"{step:06d}" / PRETRAINED
                    with (
                        ema.applied()
                        if ema is not None and cfg.ema.use_for_eval
                        else contextlib.nullcontext()
                    ):
                        save_model(model_dir)
                if evaluating:
                    logger.log({"step": step, **_evaluate(cfg, model_dir, out)})
                if not saving:  # the checkpoints are the run's weights; this copy only fed the simulator
                    shutil.rmtree(model_dir)
            if world > 1:
                dist.barrier()
        if stopping:
            break
    bar.close()
    logger.close(metrics_file)
    if world > 1:
        dist.destroy_process_group()
    return out


# --------------------------------------------------------------------------------------------------
# Pieces of the loop


def base_name(path: str) -> str:
    """How an adapter names its base checkpoint: a local folder by its absolute path (the adapter may be
    loaded from anywhere), a hub repo id as given."""
    p = Path(path).expanduser()
    return str(p.resolve()) if p.is_dir() else path


def _episodes(cfg: TrainConfig) -> list[int] | None:
    return list(cfg.dataset.episodes) if cfg.dataset.episodes is not None else None


def _with_config(policy: SmolVLAPolicy, pcfg: SmolVLAConfig) -> SmolVLAPolicy:
    """The loaded policy under the run's config (new output features keep the same shapes)."""
    if pcfg.action_feature.shape[0] > pcfg.max_action_dim:
        raise TrainingError(
            f"action dim {pcfg.action_feature.shape[0]} > max_action_dim {pcfg.max_action_dim}"
        )
    policy.config = pcfg
    policy.reset()
    return policy


def _noise_and_time(
    cfg: TrainConfig, pcfg: SmolVLAConfig, gstep: int, rank: int, world: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's slice of the global batch's noise and flow time, drawn from (seed, step)."""
    from smolvla.model.vla import sample_time

    g = torch.Generator().manual_seed(cfg.seed * 7_919 + gstep)
    gb = cfg.batch_size * world
    noise = torch.randn(gb, pcfg.chunk_size, pcfg.max_action_dim, generator=g)
    state = torch.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**62, (), generator=g)))
    t = sample_time(gb, "cpu")  # Beta(1.5, 1) as the policy draws it, from this step's seed
    torch.set_rng_state(state)
    sl = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)
    return noise[sl].to(device), t[sl].to(device)


def _augment(raw: dict, augment: Any, cameras: list[str], seed: int, gstep: int, rank: int) -> dict:
    """Per-sample augmentation drawn from (seed, step, rank): reproducible across resumes."""
    g = torch.Generator().manual_seed(seed * 104_729 + gstep * 64 + rank)
    raw = dict(raw)
    for key in cameras:
        raw[key] = augment.batch(raw[key], g)
    return raw


# What a run writes into its output folder besides checkpoints. A folder holding only these and no
# complete checkpoint is a run that stopped (kill -9, OOM, Ctrl-C) before its first checkpoint: there is
# nothing to resume, and its logs describe weights that no longer exist, so a new run may clear them.
RUN_FILES = ("metrics.jsonl", "training_curves.png", "tensorboard", "wandb", "eval", "checkpoints")


def _check_output_dir(out: Path, cfg: TrainConfig, rank: int) -> Path | None:
    """The checkpoint to resume from, or None for a new run; refuses to mix two runs in one folder, and
    clears what a run that never reached a checkpoint left (only its own files) so a rerun can start."""
    last = resume_checkpoint(out)
    if last is not None and last_checkpoint(out) is None:
        log.warning(
            "%s does not name a complete checkpoint; using the newest one, %s",
            out / "checkpoints" / "last",
            last,
        )
    if cfg.resume:
        if last is None:
            raise TrainingError(
                f"--resume=true but {out} holds no checkpoint (the run stopped before its first one): there "
                "is nothing to resume; run the same command without --resume=true to start over in it"
            )
        step = checkpoint_step(last)
        if cfg.steps <= step:
            raise TrainingError(
                f"--steps={cfg.steps}: the run in {out} is at step {step} already (checkpoint {last.name}); "
                f"pass --steps greater than {step} to train further, e.g. --steps={2 * step}"
            )
        return last
    if last is not None:
        raise TrainingError(
            f"--output_dir {out} already holds a run; pass --resume=true to continue it "
            "or choose a new folder"
        )
    if rank != 0 or not out.is_dir() or not any(out.iterdir()):
        return None  # only rank 0 clears (it did, before the others got here)
    left = sorted(out.iterdir())
    ckpts = out / "checkpoints"
    # Before its first checkpoint is renamed into place, a run's checkpoints/ holds only hidden build
    # folders and a `last` naming nothing; anything else there (or beside) is not this kind of leftover.
    strange = [p for p in left if p.name not in RUN_FILES or (p == ckpts and not p.is_dir())]
    if ckpts.is_dir():
        strange += [p for p in ckpts.iterdir() if not (p.name.startswith(".") or p.name == LAST)]
    if strange:
        raise TrainingError(
            f"--output_dir {out} holds no checkpoint but files a training run does not write "
            f"({', '.join(str(p.relative_to(out)) for p in strange[:5])}); choose a new folder"
        )
    log.warning(
        "%s holds no complete checkpoint (a run stopped before its first one); starting over, clearing %s",
        out,
        ", ".join(p.name for p in left),
    )
    for p in left:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    return None


@contextlib.contextmanager
def _loading(ckpt: Path, out: Path) -> Iterator[None]:
    """A checkpoint damaged after it was written (kill -9 cannot: see train.state) names the way back."""
    try:
        yield
    except SmolVLAError as e:
        older = [p.name for p in complete_checkpoints(out) if int(p.name) < int(ckpt.name)]
        way = (
            f"point checkpoints/last at an earlier one (ln -sfn {older[-1]} {out / 'checkpoints' / LAST}) "
            if older
            else ""
        )
        raise TrainingError(
            f"--resume=true: checkpoint {ckpt} is damaged ({e}); {way}or start a new run in another folder"
        ) from None


def _evaluate(cfg: TrainConfig, ckpt: Path, out: Path) -> dict[str, Any]:
    from smolvla.envs.metaworld import tasks_for
    from smolvla.eval.metaworld import EvalConfig, evaluate

    ev = EvalConfig(
        policy_path=str(ckpt),
        tasks=tuple(tasks_for(cfg.env.task)),
        n_episodes=cfg.eval.n_episodes,
        workers=cfg.eval.workers,
        output_dir=str(out / "eval" / ckpt.parent.name),
        **({"max_episode_steps": cfg.env.max_episode_steps} if cfg.env.max_episode_steps else {}),
    )
    report = evaluate(ev, progress=False)
    return {"eval_success": report["overall"]["success_rate"]}


class _Logger:
    """metrics.jsonl always; TensorBoard if installed; wandb if asked for and installed."""

    def __init__(self, out: Path, cfg: TrainConfig, enabled: bool, resumed_at: int | None = None) -> None:
        self.enabled = enabled
        self.records: list[dict] = []
        self.tb = self.wandb = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        metrics = out / "metrics.jsonl"
        if resumed_at is not None and metrics.is_file():
            # The steps logged after the checkpoint, before the run stopped, are about to be trained and
            # logged again: keep each step once.
            kept = _records_up_to(metrics, resumed_at)
            write_atomic(metrics, "".join(json.dumps(r) + "\n" for r in kept))
            plot_curves(metrics, out / "training_curves.png")
        self.file = open(metrics, "a")  # noqa: SIM115 (closed in close())
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops the events past the checkpoint for the same reason
            purge = resumed_at + 1 if resumed_at is not None else None
            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=purge)
        except ImportError:
            pass
        if cfg.wandb.enable:
            try:
                import wandb
            except ImportError as e:
                raise TrainingError("--wandb.enable=true needs `pip install wandb`") from e
            self.wandb = wandb.init(project="smolvla", config=cfg.to_dict(), dir=str(out))

    def log(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(rec)
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        for k, v in rec.items():
            if self.tb is not None and k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(f"train/{k}", v, rec["step"])
        if self.wandb is not None:
            self.wandb.log(rec, step=rec["step"])

    def close(self, metrics_file: Path) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        plot_curves(metrics_file, metrics_file.parent / "training_curves.png")


def _records_up_to(metrics_file: Path, step: int) -> list[dict[str, Any]]:
    """The records of steps up to `step`; a line cut short by a kill is dropped."""
    kept = []
    for line in metrics_file.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            kept.append(rec)
    return kept


def plot_curves(metrics_file: Path, png: Path) -> None:
    """Loss, learning rate and samples/s against steps (and eval success if logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    train = [r for r in recs if "loss" in r]
    evals = [r for r in recs if "eval_success" in r]
    if not train:
        return
    panels = [("loss", True), ("lr", False), ("samples_per_s", False)] + (
        [("eval_success", False)] if evals else []
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, log) in zip(axes, panels, strict=True):
        rows = evals if key == "eval_success" else train
        ax.plot(
            [r["step"] for r in rows], [r[key] for r in rows], marker="o" if key == "eval_success" else None
        )
        ax.set_title(key)
        ax.set_xlabel("step")
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
