"""Speed and memory benchmarks of the model (`smolvla bench matmul|inference|train|all`): random
weights, this machine. (The data layer, the simulator and the server: bench_data, bench_sim,
bench_serving.)

    smolvla bench matmul                                   # the machine's GEMM peak, per dtype
    smolvla bench inference --policy.preset=base --cams 2 3 --mode reference fp32 bf16 int8
    smolvla bench inference --cams 2 --mode int8 --image_size=384 --policy.num_steps=5  # fewer tokens, steps
    smolvla bench train --policy.preset=base --cams=2 --batch_size=4 --precision fp32 bf16
    smolvla bench all --compare=/path/to/lerobot-env/bin/python   # every figure of the README table

Each case runs in its own process (so peak RSS is the case's alone) and prints one JSON line: warm-up,
then the median (and min) of `--runs` timed runs, the split into stages, FLOP/s against the matmul
peak measured in the same invocation, and two peak RSS figures: the whole process (loading included)
and during the timed runs only (LeRobot's script reports the latter). Inference cases load one random
checkpoint written in LeRobot's layout (bf16 backbone and expert, fp32 projections), so every mode runs
the same weights and each reports its action error against the fp32 reference on the same noise.

`--compare=PYTHON` also runs LeRobot's SmolVLA (its reference script, `--lerobot_script`) in that
interpreter for the matching cases and prints its JSON lines and a ratio line beside ours.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from smolvla.apps.bench_measure import median, peaks, reset_peak_rss, status_kb, timed_runs
from smolvla.errors import SmolVLAError

INFER_MODES = ("reference", "fp32", "bf16", "int8")
BACKENDS = ("torch", "onnxruntime", "openvino")
# LeRobot's precision beside each of our modes (its best bf16 setting for ours in bf16 and int8)
LEROBOT_PREC = {"reference": "fp32", "fp32": "fp32", "bf16": "bf16vlm_expert", "int8": "bf16vlm_expert"}
TRAIN_PRECISIONS = ("fp32", "bf16")
TRAIN_PEAK = {"fp32": "float32", "bf16": "bfloat16"}  # the GEMM peak each precision is compared to
DEFAULT_LEROBOT_SCRIPT = (
    Path(__file__).resolve().parents[3].parent  # ../shared beside the repository
    / "shared"
    / "tools"
    / "lerobot_reference"
    / "bench_smolvla_ref.py"
)


class BenchError(SmolVLAError, ValueError):
    """A benchmark option is wrong (the message names it)."""


# --------------------------------------------------------------------------------------------------
# Measuring


def matmul_peak(threads: int, seconds: float = 1.0) -> dict[str, Any]:
    """GFLOP/s of one large GEMM (2048^3, and the vision tower's 2048x768x3072) per dtype."""
    from smolvla.hardware import int8_supported
    from smolvla.model.inference import Int8Linear

    torch.set_num_threads(threads)
    out: dict[str, Any] = {"case": "matmul", "threads": threads}
    for name, (m, k, n) in {"sq2048": (2048, 2048, 2048), "vit_fc1": (2048, 768, 3072)}.items():
        x = torch.randn(m, k)
        lin = torch.nn.Linear(k, n, bias=False)
        cases = {
            "float32": (lin, x),
            "bfloat16": (torch.nn.Linear(k, n, bias=False).bfloat16(), x.bfloat16()),
        }
        if int8_supported():
            cases["int8"] = (Int8Linear(lin), x)
        for dt, (layer, inp) in cases.items():
            fn = functools.partial(layer, inp)
            with torch.no_grad():
                for _ in range(3):
                    fn()
                reps = max(3, int(seconds * 100e9 / (2 * m * k * n)))
                rates = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        fn()
                    rates.append(2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9)
            out[f"{name}_{dt}_gflops"] = round(max(rates), 1)
    for dt in ("float32", "bfloat16", "int8"):
        vals = [v for k2, v in out.items() if k2.endswith(f"_{dt}_gflops")]
        if vals:
            out[f"peak_{dt}_gflops"] = max(vals)
    out["torch"] = torch.__version__
    return out


# --------------------------------------------------------------------------------------------------
# Cases (each in its own process)


def _config(preset_name: str, cams: int | None, image_size: int | None = None, **overrides: Any):
    from smolvla.config import FeatureType, PolicyFeature, preset

    cfg = preset(preset_name)
    shape = next(iter(cfg.image_features.values())).shape
    if image_size is not None:  # fewer (or more) vision tokens: the camera and the model's input size
        if image_size < 1:
            raise BenchError(f"--image_size: got {image_size}, expected a positive number of pixels")
        shape = (shape[0], image_size, image_size)
        overrides["resize_imgs_with_padding"] = (image_size, image_size)
        cams = cams or len(cfg.image_features)
    if cams is not None:
        if cams < 1:
            raise BenchError(f"--cams: got {cams}, expected >= 1")
        feats = {k: v for k, v in cfg.input_features.items() if v.type != FeatureType.VISUAL}
        feats.update(
            {
                f"observation.images.camera{i + 1}": PolicyFeature(FeatureType.VISUAL, shape)
                for i in range(cams)
            }
        )
        cfg = dataclasses.replace(cfg, input_features=feats)
    return dataclasses.replace(cfg, load_vlm_weights=False, **overrides)


def _batch(policy, b: int, lang: int, actions: bool = False) -> dict[str, torch.Tensor]:
    cfg = policy.config
    g = torch.Generator().manual_seed(0)
    batch = {k: torch.rand(b, *f.shape, generator=g) for k, f in cfg.image_features.items()}
    batch["observation.state"] = torch.randn(b, cfg.state_feature.shape[0], generator=g)
    vocab = min(250, policy.backbone.text.vocab_size)
    batch["observation.language.tokens"] = torch.randint(3, vocab, (b, lang), generator=g)
    batch["observation.language.attention_mask"] = torch.ones(b, lang, dtype=torch.bool)
    if actions:
        batch["action"] = torch.randn(b, cfg.chunk_size, cfg.action_feature.shape[0], generator=g)
        batch["action_is_pad"] = torch.zeros(b, cfg.chunk_size, dtype=torch.bool)
    return batch


def write_checkpoint(
    preset_name: str,
    cams: int | None,
    folder: Path,
    seed: int = 0,
    image_size: int | None = None,
    lang: int | None = None,
    processors: bool = True,
) -> None:
    """A random-weight checkpoint in LeRobot's layout (as smolvla_base): bf16 backbone and expert,
    fp32 projections; with processors (unit stats; `processors`), so that it loads as a user's
    checkpoint does (`smolvla.runtime.load_policy`, `smolvla export`)."""
    from smolvla.policy import SmolVLAPolicy
    from smolvla.processing import load_tokenizer, make_pre_post_processors, unit_stats

    torch.manual_seed(seed)
    # the exported graphs take tokenizer_max_length tokens: as many as the torch cases' batches
    overrides = {"tokenizer_max_length": lang} if lang else {}
    policy = SmolVLAPolicy(_config(preset_name, cams, image_size, **overrides))
    policy._file_dtypes = {
        k: torch.bfloat16 if k.startswith("model.vlm_with_expert.") else torch.float32
        for k in policy.state_dict()
    }
    policy.save_pretrained(folder)
    if not processors:
        return
    # SmolVLM2's tokenizer is not on this machine: the built-in byte tokenizer stands in (its ids fit
    # every backbone's vocabulary; speed depends on the token count, tokenizer_max_length, alone).
    name = "smolvla/tiny-backbone"
    pre, post = make_pre_post_processors(
        policy.config, dataset_stats=unit_stats(policy.config), tokenizer=load_tokenizer(name)
    )
    pre.tokenizer_name = name
    pre.save(folder)
    post.save(folder)


def _image_fields(policy) -> dict[str, Any]:
    """The camera's side, the side the vision tower sees (after resize with padding), and the vision
    tokens per camera that gives."""
    cfg, bb = policy.config, policy.backbone
    camera = next(iter(cfg.image_features.values())).shape[1:]
    h, w = cfg.resize_imgs_with_padding or camera
    step = bb.vision.patch_size * bb.scale_factor
    return {"camera_px": camera[-1], "model_px": w, "vision_tokens_per_cam": (h // step) * (w // step)}


def _count_flops(policy: torch.nn.Module, run) -> float:
    """FLOPs of run(): torch's counter, plus the int8 GEMMs it does not see (counted by hooks)."""
    from torch.utils.flop_counter import FlopCounterMode

    from smolvla.model.inference import Int8Linear

    extra = [0]

    def hook(mod: Int8Linear, args: tuple) -> None:
        extra[0] += 2 * args[0].numel() * mod.out_features

    handles = [m.register_forward_pre_hook(hook) for m in policy.modules() if isinstance(m, Int8Linear)]
    with FlopCounterMode(display=False) as fc:
        run()
    for h in handles:
        h.remove()
    return fc.get_total_flops() + extra[0]


def inference_case(
    preset_name: str,
    checkpoint: Path,
    mode: str,
    runs: int,
    threads: int,
    lang: int,
    num_steps: int | None,
    actions_out: Path,
) -> dict[str, Any]:
    from smolvla.policy import SmolVLAPolicy

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    if mode == "reference":  # the plain policy, as before any inference preparation
        policy = SmolVLAPolicy.from_pretrained(checkpoint)
    else:
        policy = SmolVLAPolicy.from_pretrained(checkpoint, inference_mode=mode)
    load_s = time.perf_counter() - t0
    cfg = policy.config
    steps = num_steps or cfg.num_steps
    batch = _batch(policy, 1, lang)
    noise = torch.randn(1, cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(1))
    model = policy.model

    vision = [0.0]  # seconds in the vision tower and connector, timed by hooks inside prefill

    def start(*_: Any) -> None:
        vision[0] -= time.perf_counter()

    def stop(*_: Any) -> None:
        vision[0] += time.perf_counter()

    for part in (model.vlm_with_expert.vlm.model.vision_model, model.vlm_with_expert.vlm.model.connector):
        part.register_forward_pre_hook(start)
        part.register_forward_hook(stop)

    @torch.no_grad()
    def chunk() -> tuple[torch.Tensor, float, float, float]:
        vision[0] = 0.0
        t0 = time.perf_counter()
        obs = policy.prepare_observation(batch)
        cache = model.prefill(obs)
        t1 = time.perf_counter()
        x = model.sample_actions(obs, noise=noise, num_steps=steps, cache=cache)  # the Euler loop alone
        return x, vision[0], t1 - t0 - vision[0], time.perf_counter() - t1

    samples, cpu, rss = timed_runs(chunk, runs)
    actions = samples[-1][0][:, :, : cfg.action_feature.shape[0]]
    # the stages are exactly predict_action_chunk's: check it gives the same actions
    same = torch.equal(actions, policy.predict_action_chunk(batch, noise=noise.clone(), num_steps=steps))
    save_file({"actions": actions.contiguous()}, str(actions_out))  # safetensors: no pickle
    flops = _count_flops(policy, chunk)
    totals = [a + b + c for _, a, b, c in samples]
    med = statistics.median(totals)
    from smolvla.model.inference import param_bytes

    return {
        "case": "inference",
        "impl": "smolvla",
        "preset": preset_name,
        "cams": len(cfg.image_features),
        **_image_fields(policy),
        "mode": mode,
        "threads": threads,
        "lang_tokens": lang,
        "num_steps": steps,
        "runs": runs,
        "s_per_chunk_median": median(totals),
        "s_per_chunk_min": round(min(totals), 4),
        "chunks_per_s": round(1 / med, 3),
        # CPU seconds of this process per chunk: with 1 thread, a figure that other jobs on the
        # machine barely change (wall time doubles under contention, CPU time does not)
        "cpu_s_per_chunk_median": median(cpu),
        "vision_s_median": median([a for _, a, _, _ in samples]),
        "prefix_s_median": median([b for _, _, b, _ in samples]),
        "denoise_s_median": median([c for _, _, _, c in samples]),
        "gflop_per_chunk": round(flops / 1e9, 1),
        "gflops_per_s": round(flops / med / 1e9, 1),
        "weights_gb": round(param_bytes(policy) / 2**30, 3),
        **rss,
        "load_s": round(load_s, 2),
        "stages_equal_predict_action_chunk": same,
        "torch": torch.__version__,
    }


def _vision_times(policy: Any, runs: int) -> dict[str, float]:
    vlm = policy.model.vlm_with_expert.vlm
    obs = policy.prepare_observation(_batch(policy, 1, 48))
    img = obs.images[0]
    spent = [0.0]

    def start(*_: Any) -> None:
        spent[0] -= time.perf_counter()

    def stop(*_: Any) -> None:
        spent[0] += time.perf_counter()

    def timed(fn: Any) -> list[float]:
        fn()
        xs = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            xs.append(time.perf_counter() - t0)
        return xs

    with torch.no_grad():
        tower = timed(lambda: vlm.model.vision_model(img))
        embed = timed(lambda: vlm.embed_image(img))
        for part in (vlm.model.vision_model, vlm.model.connector):
            part.register_forward_pre_hook(start)
            part.register_forward_hook(stop)
        policy.model.prefill(obs)
        stage = []
        for _ in range(runs):
            spent[0] = 0.0
            policy.model.prefill(obs)
            stage.append(spent[0] / len(obs.images))
    return {
        "tower_s_median": median(tower),
        "tower_connector_s_median": median(embed),
        "stage_in_prefill_per_image_s_median": median(stage),
    }


def vision_case(preset_name: str, checkpoint: Path, runs: int, threads: int) -> dict[str, Any]:
    """Where the vision stage's time goes, in one process: the SigLIP tower alone, the tower and
    connector (`embed_image`), and the stage as `prefill` runs it (per image), plain and fp32-prepared."""
    from smolvla.policy import SmolVLAPolicy

    torch.set_num_threads(threads)
    out: dict[str, Any] = {"case": "vision", "preset": preset_name, "threads": threads, "runs": runs}
    out["aten_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    out["plain"] = _vision_times(SmolVLAPolicy.from_pretrained(checkpoint), runs)
    out["fp32"] = _vision_times(SmolVLAPolicy.from_pretrained(checkpoint, inference_mode="fp32"), runs)
    out["torch"] = torch.__version__
    return out


# How each fine-tuning mode sets the policy up: config fields, and LoRA (LeRobot's SmolVLA defaults).
FINETUNE = {
    "expert": {},  # LeRobot's default: the action expert and projections train, the VLM is frozen
    "lora": {},  # LoRA r=16 on the expert's q/v and the projections (add_adapter below)
    "vlm": {"train_expert_only": False},  # the VLM's text layers and connector train too
    "full": {"train_expert_only": False, "freeze_vision_encoder": False},  # the vision tower too
}
# GPU memory sizes of the plan, and what CUDA takes before any tensor: PyTorch's CUDA context is
# 0.3-0.5 GB (the measured CPU peaks already hold the allocator's and the libraries' slack).
GPU_SIZES_GB = (8, 12, 16, 24, 40, 80)
CUDA_OVERHEAD_GB = 0.5


def train_case(
    preset_name: str,
    checkpoint: Path,
    batch_size: int,
    runs: int,
    threads: int,
    lang: int,
    precision: str,
    finetune: str = "expert",
    gradient_checkpointing: bool = False,
    timed: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """A fine-tuning step from `checkpoint` (bf16 on disk, as smolvla_base), set up as `smolvla train`
    sets it up: "fp32" as loaded, "bf16" with bf16 autocast and the frozen parts stored in bf16
    (`training_precision`); `finetune` one of FINETUNE.

    Memory is counted, then measured. Counted: weights (in their training dtypes), gradients and AdamW
    state of what trains, and the activations autograd keeps (`saved_activation_bytes`, at batch 1 and
    2: a part per step and a part per sample). Their sum at `batch_size` is the estimate of a GPU's
    peak (`torch.cuda.max_memory_allocated` less the temporaries of the backward pass). Measured (with
    `timed`): steps at `batch_size`, their time and the process's peak RSS over what it held before
    the policy existed (on CUDA also max_memory_allocated)."""
    from smolvla.model.lora import LoraSpec
    from smolvla.policy import SmolVLAPolicy
    from smolvla.train.loop import training_precision
    from smolvla.train.optim import make_optimizer

    if finetune not in FINETUNE:
        raise BenchError(f"--finetune: got {finetune!r}, expected some of {list(FINETUNE)}")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    rss_before_gb = status_kb("VmRSS") / 2**20
    policy = SmolVLAPolicy.from_pretrained(checkpoint, **FINETUNE[finetune])
    if finetune == "lora":
        policy.add_adapter(LoraSpec(), base=str(checkpoint))
    policy.to(dev).train().set_gradient_checkpointing(gradient_checkpointing)
    cfg = policy.config
    amp = training_precision(policy, precision, dev)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = make_optimizer(list(policy.parameters()), cfg)

    def nbytes(ts: Any) -> int:
        return sum(t.numel() * t.element_size() for t in ts)

    weights = nbytes(policy.parameters()) + nbytes(policy.buffers())
    grads = nbytes(params)  # a gradient per trained parameter, in its dtype
    adam = 2 * grads + 4 * len(params)  # exp_avg and exp_avg_sq, and a step counter per tensor

    def batch(b: int) -> dict[str, torch.Tensor]:
        return {k: v.to(dev) for k, v in _batch(policy, b, lang, actions=True).items()}

    def kept(b: int) -> int:
        data = batch(b)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp is not None):
            n, _ = saved_activation_bytes(lambda: policy(data), policy)
        return n

    a1, a2 = kept(1), kept(2)
    per_sample, per_step = a2 - a1, 2 * a1 - a2
    gb = 2**30

    def in_gb(n: float) -> float:  # 4 significant digits: a micro policy's bytes are not 0 GB
        return float(f"{n / gb:.4g}")

    estimate = weights + grads + adam + per_step + per_sample * batch_size
    rec: dict[str, Any] = {
        "case": "train_step",
        "impl": "smolvla",
        "preset": preset_name,
        "finetune": finetune,
        "gradient_checkpointing": gradient_checkpointing,
        "cams": len(cfg.image_features),
        **_image_fields(policy),
        "batch": batch_size,
        "precision": precision,
        "device": dev.type,
        "threads": threads,
        "lang_tokens": lang,
        "params": sum(p.numel() for p in policy.parameters()),
        "trainable": sum(p.numel() for p in params),
        "weights_gb": in_gb(weights),
        "grads_gb": in_gb(grads),
        "optimizer_state_gb": in_gb(adam),
        "activations_per_sample_gb": in_gb(per_sample),
        "activations_per_step_gb": in_gb(per_step),
        "estimate_gb": in_gb(estimate),
        "timed": timed,
    }
    if not timed:
        return rec
    data = batch(batch_size)

    def step() -> tuple[float, float, float, float]:
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp is not None):
            loss, _ = policy(data)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, cfg.optimizer_grad_clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return t1 - t0, t2 - t1, time.perf_counter() - t0, float(loss.detach())

    step()  # warm-up (and AdamW's state)
    adam_found = sum(nbytes(v for v in st.values() if torch.is_tensor(v)) for st in opt.state.values())
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    reset_peak_rss()
    samples = [step() for _ in range(runs)]
    rss = peaks()
    total = statistics.median(s[2] for s in samples)
    fwd_bwd = statistics.median(s[0] + s[1] for s in samples)
    rec.update(
        runs=runs,
        s_per_step_median=round(total, 4),
        forward_s_median=median([s[0] for s in samples]),
        backward_s_median=median([s[1] for s in samples]),
        fwd_bwd_s_median=round(fwd_bwd, 4),
        samples_per_s=round(batch_size / total, 2),
        losses=[round(s[3], 4) for s in samples],
        optimizer_state_found_gb=in_gb(adam_found),
        **rss,
        rss_before_policy_gb=round(rss_before_gb, 3),
        # what the step's tensors took: the peak less the interpreter and libraries held before
        measured_gb=round(rss["peak_rss_runs_gb"] - rss_before_gb, 3),
    )
    rec["measured_over_estimate"] = round(rec["measured_gb"] * gb / estimate, 3)
    if dev.type == "cuda":
        rec["cuda_max_allocated_gb"] = round(torch.cuda.max_memory_allocated(dev) / gb, 3)
    if dev.type == "cpu":
        from torch.utils.flop_counter import FlopCounterMode

        with (
            FlopCounterMode(display=False) as fc,
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp is not None),
        ):
            loss, _ = policy(data)
            loss.backward()
        opt.zero_grad(set_to_none=True)
        rec["gflop_fwd_bwd"] = round(fc.get_total_flops() / 1e9, 1)
        rec["gflops_per_s"] = round(fc.get_total_flops() / fwd_bwd / 1e9, 1)
    rec["torch"] = torch.__version__
    return rec


def memory_plan(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per fine-tuning mode x precision x checkpointing: memory as a line, fixed + per sample x batch,
    and the largest batch that fits each GPU size (less CUDA_OVERHEAD_GB).

    The line comes from the measured peaks where steps ran (two batch sizes or more: a fit; one: its
    peak with the counted per-sample bytes as slope), else from the counted bytes alone. Measured
    peaks include what the backward pass holds beyond the counted bytes (gradient temporaries), so
    they are the safer basis; `counted_share` says how much of the measured peak the count explains."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("case") == "train_step" and "estimate_gb" in r:
            groups.setdefault((r["finetune"], r["precision"], r["gradient_checkpointing"]), []).append(r)
    plans = []
    for key, rs in groups.items():
        r0 = rs[0]
        counted_fixed = (
            r0["weights_gb"] + r0["grads_gb"] + r0["optimizer_state_gb"] + r0["activations_per_step_gb"]
        )
        counted_per = r0["activations_per_sample_gb"]
        timed = sorted((r["batch"], r["measured_gb"]) for r in rs if r.get("timed") and "measured_gb" in r)
        if len(timed) >= 2:
            bs, ms = [b for b, _ in timed], [m for _, m in timed]
            mb, mm = statistics.fmean(bs), statistics.fmean(ms)
            per = sum((b - mb) * (m - mm) for b, m in timed) / sum((b - mb) ** 2 for b in bs)
            fixed, basis = mm - per * mb, "measured"
        elif timed:
            per = counted_per
            fixed, basis = timed[0][1] - per * timed[0][0], "measured"
        else:
            fixed, per, basis = counted_fixed, counted_per, "counted"
        plans.append(
            {
                "case": "memory_plan",
                "finetune": key[0],
                "precision": key[1],
                "gradient_checkpointing": key[2],
                "trainable": r0["trainable"],
                "basis": basis,
                "fixed_gb": round(fixed, 3),
                "per_sample_gb": round(per, 4),
                "counted_fixed_gb": round(counted_fixed, 3),
                "counted_per_sample_gb": counted_per,
                "counted_share": [
                    round(r["estimate_gb"] / r["measured_gb"], 3) for r in rs if r.get("measured_gb")
                ],
                "gb_at_batch": {r["batch"]: round(fixed + per * r["batch"], 2) for r in rs},
                "max_batch": {
                    f"{size}GB": max(0, int((size - CUDA_OVERHEAD_GB - fixed) // per)) if per > 0 else None
                    for size in GPU_SIZES_GB
                },
            }
        )
    return plans


def saved_activation_bytes(fn: Callable[[], Any], module: torch.nn.Module) -> tuple[int, Any]:
    """(bytes autograd keeps for the backward pass while `fn()` runs, fn's result). Each storage counts
    once, and `module`'s parameters (held anyway) not at all: what a batch adds, on any device."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


# --------------------------------------------------------------------------------------------------
# LeRobot's implementation, in its own interpreter


def lerobot_case(python: str, script: Path, args: list[str], threads: int, runs: int) -> dict[str, Any]:
    """One case of LeRobot's reference script; its RESULT line, with our field names added."""
    cmd = [
        python,
        str(script),
        *args,
        "--threads",
        str(threads),
        "--runs",
        str(runs),
        "--max-runs",
        str(runs),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        return {"impl": "lerobot", "args": args, "error": (p.stderr or p.stdout)[-2000:], "rc": p.returncode}
    r = json.loads(lines[-1][len("RESULT ") :])
    out: dict[str, Any] = {"impl": "lerobot", "args": args, "threads": r.get("threads")}
    if args[0] == "infer":
        br = r.get("breakdown_median_run", {})
        out.update(
            case="inference",
            s_per_chunk_median=round(r["median_s"], 4),
            vision_s_median=br.get("embed_image_s"),
            prefix_s_median=br.get("prefix_vlm_forward_s"),
            denoise_s_median=br.get("denoise_total_s"),
            peak_rss_runs_gb=round(r["peak_rss_during_runs_MiB"] / 1024, 3),
            n_clean_runs=r.get("n_clean"),
            runs_s=r.get("all_runs_s"),
        )
    elif args[0] == "train":
        out.update(
            case="train_step",
            s_per_step_median=round(r["median_fwd_bwd_s"] + r["median_clip_adamw_s"], 4),
            fwd_bwd_s_median=round(r["median_fwd_bwd_s"], 4),
            forward_s_median=round(r["median_fwd_s"], 4),
            backward_s_median=round(r["median_bwd_s"], 4),
            peak_rss_runs_gb=round(r["peak_rss_during_runs_MiB"] / 1024, 3),
            n_clean_runs=r["fwd_bwd"].get("n_clean"),
            trainable=r.get("trainable_params"),
        )
    out["torch"] = r.get("torch")
    return out


# --------------------------------------------------------------------------------------------------
# Driver


def _child(
    case: str, module: str = "smolvla.apps.bench", env_extra: dict | None = None, **spec: Any
) -> dict[str, Any]:
    """Runs one case in its own process (so its peak RSS is its own); the spec travels as one JSON
    argument and comes back as the child's last stdout line."""
    cmd = [sys.executable, "-m", module, "_case", json.dumps({"case": case, **spec})]
    env = {**os.environ, **(env_extra or {})}
    src = str(Path(__file__).resolve().parents[2])  # the package this driver runs, also in the child
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"case": case, "spec": spec, "error": p.stderr[-2000:], "rc": p.returncode}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _emit(rec: dict[str, Any]) -> None:
    print(json.dumps(rec), flush=True)


def _check_compare(python: str | None, script: Path) -> None:
    if python is None:
        return
    if not Path(python).is_file() or not os.access(python, os.X_OK):
        raise BenchError(
            f"--compare: got {python!r}, expected the python executable of LeRobot's environment "
            "(build it with shared/tools/lerobot_reference/make_lerobot_env.sh)"
        )
    if not script.is_file():
        raise BenchError(f"--lerobot_script: {script} does not exist (LeRobot's bench_smolvla_ref.py)")
    if not (script.parent / "smolvlm2_500m_config").is_dir():
        raise BenchError(
            f"--lerobot_script: no smolvlm2_500m_config/ beside {script}; make_lerobot_env.sh writes it "
            "there (run it, or point --lerobot_script at the copy where it ran)"
        )


def _ratio(ours: dict[str, Any], theirs: dict[str, Any], key: str) -> dict[str, Any]:
    rec = {
        "case": "ratio",
        "of": key,
        "ours": {
            k: ours.get(k) for k in ("case", "mode", "finetune", "batch", "precision", "cams", "model_px")
        },
    }
    rec["lerobot_args"] = theirs.get("args")
    if "error" in ours or "error" in theirs or not theirs.get(key) or not ours.get(key):
        rec["error"] = "a side failed"
        return rec
    rec.update(ours_s=ours[key], lerobot_s=theirs[key], speedup=round(theirs[key] / ours[key], 2))
    for k in ("peak_rss_runs_gb",):
        if ours.get(k) and theirs.get(k):
            rec[f"{k}_ours"], rec[f"{k}_lerobot"] = ours[k], theirs[k]
    return rec


def run_matmul(threads: int) -> dict[str, Any]:
    rec = _child("matmul", threads=threads)
    _emit(rec)
    return rec


def _with_peak(rec: dict[str, Any], peak: dict[str, Any] | None, dtype: str) -> dict[str, Any]:
    key = f"peak_{dtype}_gflops"
    if peak and rec.get("gflops_per_s") and peak.get(key):
        rec["matmul_peak_gflops"] = peak[key]
        rec["of_matmul_peak"] = round(rec["gflops_per_s"] / peak[key], 3)
    return rec


def _random_checkpoint(
    out: Path, preset: str, cams: int | None, image_size: int | None, lang: int | None = None
) -> Path:
    """`write_checkpoint` in a child process (so no case's peak RSS includes it)."""
    _child("checkpoint", preset=preset, cams=cams, out=str(out), image_size=image_size, lang=lang)
    if not (out / "model.safetensors").is_file():
        raise BenchError(f"could not write the random checkpoint for --policy.preset={preset} --cams={cams}")
    return out


def run_inference(c: BenchInferenceConfig, peak: dict[str, Any] | None) -> list[dict[str, Any]]:
    for m in c.mode:
        if m not in INFER_MODES:
            raise BenchError(f"--mode: got {m!r}, expected some of {list(INFER_MODES)}")
    for b in c.backend:
        if b not in BACKENDS:
            raise BenchError(f"--backend: got {b!r}, expected some of {list(BACKENDS)}")
        if b != "torch" and importlib.util.find_spec(b) is None:
            raise BenchError(f"--backend: {b} is not installed (pip install 'smolvla[{b}]')")
    preset, steps = c.policy.preset, c.policy.num_steps
    out = []
    with tempfile.TemporaryDirectory(prefix="smolvla-bench-") as tmp:
        for cams in c.cams:
            ckpt = _random_checkpoint(Path(tmp) / f"{preset}-{cams}cams", preset, cams, c.image_size, c.lang)
            refs: dict[str, torch.Tensor] = {}
            lerobot: dict[str, dict[str, Any]] = {}
            for mode in c.mode if "torch" in c.backend else ():
                act = Path(tmp) / f"actions-{cams}-{mode}.safetensors"
                rec = _child(
                    "inference",
                    preset_name=preset,
                    checkpoint=str(ckpt),
                    mode=mode,
                    runs=c.runs,
                    threads=c.threads,
                    lang=c.lang,
                    num_steps=steps,
                    actions_out=str(act),
                )
                if act.is_file():
                    refs[mode] = load_file(str(act))["actions"]
                    base = refs.get("fp32", refs.get("reference"))
                    if base is not None and mode not in ("fp32", "reference"):
                        err = (refs[mode] - base).abs()
                        rec["action_err_vs_fp32_mean"] = float(f"{err.mean().item():.3g}")
                        rec["action_err_vs_fp32_max"] = float(f"{err.max().item():.3g}")
                    elif mode == "fp32" and "reference" in refs:
                        rec["action_err_vs_reference_max"] = float(
                            f"{(refs['fp32'] - refs['reference']).abs().max().item():.3g}"
                        )
                _emit(
                    _with_peak(
                        rec, peak, "int8" if mode == "int8" else "bfloat16" if mode == "bf16" else "float32"
                    )
                )
                out.append(rec)
                if c.compare and preset == "base" and not steps and c.image_size is None:
                    prec = LEROBOT_PREC[mode]
                    if prec not in lerobot:
                        lr_args = ["infer", "--cams", str(cams), "--prec", prec, "--n-lang", str(c.lang)]
                        script = Path(c.lerobot_script)
                        lerobot[prec] = lerobot_case(c.compare, script, lr_args, c.threads, c.runs)
                        _emit(lerobot[prec])
                    _emit(_ratio(rec, lerobot[prec], "s_per_chunk_median"))
            exported = [b for b in c.backend if b != "torch"]
            if exported or c.auto:
                out += _run_exported(c, ckpt, Path(tmp), cams, exported, refs)
    return out


def _inputs_file(ckpt: Path, lang: int, path: Path) -> Path:
    """The torch cases' inputs (`_batch`, and their noise) as safetensors, for the exported cases."""
    from types import SimpleNamespace

    from smolvla.checkpoint import resolve_backbone
    from smolvla.config import SmolVLAConfig

    cfg = SmolVLAConfig.load(ckpt / "config.json")
    backbone, _ = resolve_backbone(cfg, ckpt)
    batch = _batch(SimpleNamespace(config=cfg, backbone=backbone), 1, lang)
    noise = torch.randn(1, cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(1))
    tensors = {k: v for k, v in batch.items() if k.startswith("observation.images.")}
    tensors.update(
        tokens=batch["observation.language.tokens"],
        token_mask=batch["observation.language.attention_mask"],
        state=batch["observation.state"],
        noise=noise,
    )
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _run_exported(
    c: BenchInferenceConfig, ckpt: Path, tmp: Path, cams: int, backends: list[str], refs: dict
) -> list[dict[str, Any]]:
    """The export (as `load_policy` makes it, into a cache in `tmp`), each exported backend x mode on
    the torch cases' inputs and noise, and what auto picks."""
    from smolvla.runtime.exported import openvino_bf16

    env = {"SMOLVLA_CACHE": str(tmp / "cache")}
    out = []
    export = _child("export", "smolvla.apps.bench_exported", env, checkpoint=str(ckpt))
    _emit(export)
    out.append(export)
    if "error" in export:
        return out
    inputs = _inputs_file(ckpt, c.lang, tmp / f"inputs-{cams}.safetensors")
    supported = {
        "onnxruntime": ("fp32", "int8"),
        "openvino": ("fp32", "int8", *(("bf16",) if openvino_bf16() else ())),
    }
    for backend in backends:
        for mode in [m for m in c.mode if m in supported[backend]]:
            act = tmp / f"actions-{cams}-{backend}-{mode}.safetensors"
            rec = _child(
                "exported",
                "smolvla.apps.bench_exported",
                env,
                export_dir=export["path"],
                backend=backend,
                mode=mode,
                runs=c.runs,
                threads=c.threads,
                num_steps=c.policy.num_steps,
                inputs=str(inputs),
                actions_out=str(act),
            )
            base = refs.get("fp32", refs.get("reference"))
            if act.is_file() and base is not None:
                err = (load_file(str(act))["actions"] - base).abs()
                rec["action_err_vs_fp32_mean"] = float(f"{err.mean().item():.3g}")
                rec["action_err_vs_fp32_max"] = float(f"{err.max().item():.3g}")
            _emit(rec)
            out.append(rec)
    if c.auto:
        rec = _child("auto", "smolvla.apps.bench_exported", env, checkpoint=str(ckpt), threads=c.threads)
        _emit(rec)
        out.append(rec)
    return out


def run_train(c: BenchTrainConfig, peak: dict[str, Any] | None) -> list[dict[str, Any]]:
    for prec in c.precision:
        if prec not in TRAIN_PRECISIONS:
            raise BenchError(f"--precision: got {prec!r}, expected some of {list(TRAIN_PRECISIONS)}")
    for mode in c.finetune:
        if mode not in FINETUNE:
            raise BenchError(f"--finetune: got {mode!r}, expected some of {list(FINETUNE)}")
    if not c.batch_size or any(b < 1 for b in c.batch_size):
        raise BenchError(f"--batch_size: got {c.batch_size!r}, expected positive integers")
    out = []
    lerobot: dict[tuple[str, int], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="smolvla-bench-") as tmp:
        preset = c.policy.preset
        ckpt = _random_checkpoint(Path(tmp) / "ckpt", preset, c.cams, c.image_size)
        for mode in c.finetune:
            for prec in c.precision:
                for b in c.batch_size:
                    spec = dict(preset_name=preset, checkpoint=str(ckpt), batch_size=b, runs=c.runs)
                    spec.update(threads=c.threads, lang=c.lang, precision=prec, finetune=mode)
                    spec.update(gradient_checkpointing=c.gradient_checkpointing, device=c.device)
                    spec.update(timed=b <= c.max_timed_batch)
                    rec = _with_peak(_child("train", **spec), peak, TRAIN_PEAK[prec])
                    _emit(rec)
                    out.append(rec)
                    # LeRobot trains in fp32 (use_amp off): each of our precisions against that
                    if c.compare and spec["timed"] and preset == "base" and c.image_size is None:
                        if (mode, b) not in lerobot:
                            lerobot[mode, b] = _lerobot_train(c, mode, rec.get("cams", c.cams or 2), b)
                            _emit(lerobot[mode, b])
                        _emit(_ratio(rec, lerobot[mode, b], "s_per_step_median"))
    for plan in memory_plan(out):
        _emit(plan)
    return out


def _lerobot_train(c: BenchTrainConfig, mode: str, cams: int, b: int) -> dict[str, Any]:
    """LeRobot's training step in `mode`: its reference script for expert-only (LeRobot's default),
    bench_lerobot_modes.py (the same builder and timing, the mode set up as LeRobot does) otherwise."""
    shape = ["--cams", str(cams), "--bs", str(b), "--n-lang", str(c.lang)]
    if mode == "expert":
        rec = lerobot_case(c.compare, Path(c.lerobot_script), ["train", *shape], c.threads, c.runs)
    else:
        script = Path(__file__).with_name("bench_lerobot_modes.py")
        args = ["train", "--ref", str(c.lerobot_script), "--mode", mode, *shape]
        rec = lerobot_case(c.compare, script, args, c.threads, c.runs)
    return {**rec, "finetune": mode, "batch": b, "precision": "fp32"}


def _default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclasses.dataclass(frozen=True)
class BenchTrainPolicyConfig:
    preset: str = "base"  # the preset built with random weights: base | tiny | micro


@dataclasses.dataclass(frozen=True)
class BenchPolicyConfig(BenchTrainPolicyConfig):
    num_steps: int | None = None  # denoising steps (None: the preset's)


@dataclasses.dataclass(frozen=True)
class BenchMatmulConfig:
    """The machine's GEMM peak per dtype."""

    threads: int = dataclasses.field(default_factory=_default_threads)  # intra-op threads (all cores)


@dataclasses.dataclass(frozen=True)
class BenchCommonConfig:
    threads: int = dataclasses.field(default_factory=_default_threads)  # intra-op threads (all cores)
    runs: int = 5  # timed runs after the warm-up (median reported)
    compare: str | None = None  # also time LeRobot's SmolVLA with this python interpreter
    lerobot_script: str = str(DEFAULT_LEROBOT_SCRIPT)  # LeRobot's bench script, for --compare
    matmul: bool = True  # measure the GEMM peak first (FLOP/s are reported against it)


@dataclasses.dataclass(frozen=True)
class BenchInferenceConfig(BenchCommonConfig):
    """Seconds per action chunk, per inference mode and camera count."""

    policy: BenchPolicyConfig = dataclasses.field(default_factory=BenchPolicyConfig)
    cams: tuple[int, ...] = (2,)  # camera counts, one case each (space-separated: --cams 2 3)
    mode: tuple[str, ...] = INFER_MODES  # inference modes among reference, fp32, bf16, int8
    # torch, onnxruntime, openvino (space-separated): the exported backends run the modes they have
    # (onnxruntime fp32 int8; openvino fp32 int8, bf16 where the CPU has it), after an export timed
    # as `load_policy` makes it
    backend: tuple[str, ...] = ("torch",)
    auto: bool = False  # also measure what --policy.backend=auto picks here (every backend x precision)
    lang: int = 48  # language tokens
    # camera and model input side in pixels (None: the preset's; base: 256 px cameras padded to 512);
    # fewer pixels, fewer vision tokens: (side / 64)^2 per camera for base
    image_size: int | None = None


@dataclasses.dataclass(frozen=True)
class BenchTrainConfig(BenchCommonConfig):
    """Seconds per training step and the memory plan, per fine-tuning mode, precision and batch size."""

    policy: BenchTrainPolicyConfig = dataclasses.field(default_factory=BenchTrainPolicyConfig)
    cams: int | None = None  # cameras (None: the preset's)
    batch_size: tuple[int, ...] = (4,)  # samples per training step, one case each (--batch_size 1 8 32 64)
    lang: int = 48  # language tokens
    image_size: int | None = None  # camera and model input side in pixels (None: the preset's)
    # as `smolvla train --precision`: fp32, or bf16 autocast with frozen parts stored in bf16
    precision: tuple[str, ...] = TRAIN_PRECISIONS
    # what trains: expert (LeRobot's default), lora (r=16, LeRobot's targets), vlm (+ text layers and
    # connector), full (+ the vision tower)
    finetune: tuple[str, ...] = ("expert",)
    gradient_checkpointing: bool = False  # as --policy.gradient_checkpointing=true in smolvla train
    # larger batches are counted (memory estimate) but not run: on a CPU they take minutes and RAM
    max_timed_batch: int = 8
    device: str = "cpu"  # cuda: time on a GPU and report torch.cuda.max_memory_allocated


@dataclasses.dataclass(frozen=True)
class BenchVisionConfig:
    """Where the vision stage's time goes: the SigLIP tower alone, with its connector, inside prefill."""

    policy: BenchTrainPolicyConfig = dataclasses.field(default_factory=BenchTrainPolicyConfig)
    threads: int = dataclasses.field(default_factory=_default_threads)  # intra-op threads (all cores)
    runs: int = 5  # timed runs after the warm-up (median reported)


@dataclasses.dataclass(frozen=True)
class BenchAllConfig(BenchCommonConfig):
    """Every figure of the README's Speed table."""


# (subcommand, summary, config) of `smolvla bench`
CASES = (
    ("matmul", "GEMM peak per dtype", BenchMatmulConfig),
    ("inference", "seconds per action chunk, per mode", BenchInferenceConfig),
    ("train", "seconds per training step", BenchTrainConfig),
    ("vision", "the vision stage: tower alone, with connector, inside prefill", BenchVisionConfig),
    ("all", "every figure of the README's Speed table", BenchAllConfig),
)


def _run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """A case in this process, from the JSON spec `_child` sent."""
    case = spec.pop("case")
    if case == "matmul":
        return matmul_peak(spec["threads"])
    if case == "checkpoint":
        write_checkpoint(
            spec["preset"],
            spec["cams"],
            Path(spec["out"]),
            image_size=spec["image_size"],
            lang=spec.get("lang"),
        )
        return {"case": "checkpoint", "path": spec["out"]}
    if case == "inference":
        spec.update(checkpoint=Path(spec["checkpoint"]), actions_out=Path(spec["actions_out"]))
        return inference_case(**spec)
    if case == "train":
        return train_case(**{**spec, "checkpoint": Path(spec["checkpoint"])})
    if case == "vision":
        return vision_case(**{**spec, "checkpoint": Path(spec["checkpoint"])})
    raise BenchError(f"case: got {case!r}, expected matmul, checkpoint, inference, train or vision")


def run_command(cfg: Any) -> None:
    """`smolvla bench <case>`: one JSON line per measurement."""
    if isinstance(cfg, BenchMatmulConfig):
        run_matmul(cfg.threads)
        return
    if isinstance(cfg, BenchVisionConfig):
        with tempfile.TemporaryDirectory(prefix="smolvla-bench-") as tmp:
            ckpt = _random_checkpoint(Path(tmp) / "ckpt", cfg.policy.preset, 2, None)
            _emit(
                _child(
                    "vision",
                    preset_name=cfg.policy.preset,
                    checkpoint=str(ckpt),
                    runs=cfg.runs,
                    threads=cfg.threads,
                )
            )
        return
    _check_compare(cfg.compare, Path(cfg.lerobot_script))
    peak = run_matmul(cfg.threads) if cfg.matmul else None
    if isinstance(cfg, BenchInferenceConfig):
        run_inference(cfg, peak)
        return
    if isinstance(cfg, BenchTrainConfig):
        run_train(cfg, peak)
        return
    # every figure of the Speed page, with the run's own settings
    common = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(BenchCommonConfig)}
    infer = functools.partial(BenchInferenceConfig, **common)
    train = functools.partial(BenchTrainConfig, **common)
    run_inference(infer(cams=(2, 3)), peak)
    run_inference(infer(mode=("int8",), policy=BenchPolicyConfig(num_steps=5)), peak)
    # fewer vision tokens: 36 per camera instead of 64 (a policy fine-tuned at 384 px)
    run_inference(infer(cams=(2, 3), mode=("int8",), image_size=384), peak)
    run_train(train(cams=2), peak)
    run_train(train(cams=2, precision=("bf16",), image_size=384), peak)
    tiny = {**common, "compare": None}
    tiny_policy = BenchPolicyConfig(preset="tiny")
    run_inference(
        BenchInferenceConfig(**tiny, policy=tiny_policy, cams=(1,), mode=("fp32", "int8"), lang=24), peak
    )
    run_train(
        BenchTrainConfig(
            **tiny,
            policy=BenchTrainPolicyConfig(preset="tiny"),
            batch_size=(64,),
            lang=24,
            max_timed_batch=64,
        ),
        peak,
    )


if __name__ == "__main__":  # a case in its own process, started by _child (not a command: smolvla bench is)
    if sys.argv[1:2] != ["_case"] or len(sys.argv) != 3:
        sys.exit("usage: python -m smolvla.apps.bench _case SPEC_JSON (a child of `smolvla bench`)")
    print(json.dumps(_run_case(json.loads(sys.argv[2]))), flush=True)
