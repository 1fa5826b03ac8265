"""A policy exported to ONNX as the two graphs its structure gives, for runtimes other than PyTorch.

    prefix.onnx  images [0, 1], language tokens, normalized state -> prefix_pad, per layer k/v
    step.onnx    x_t, t, prefix_pad, per layer k/v                -> velocity (one Euler step)

The Euler loop, normalization and tokenization stay outside the graphs, in `smolvla.runtime.exported`
(numpy, tokenizers and the backend: no torch). Shapes are static (batch 1, the checkpoint's camera
sizes, `tokenizer_max_length` tokens, `chunk_size` actions): TensorRT builds engines from them. The
resize-with-pad and [-1, 1] scaling of images run inside prefix.onnx, so a runtime feeds camera
frames as they are. `smolvla_export.json` holds everything a runtime needs besides the graphs.

The graphs come from torch's dynamo exporter, opset 18, fp32, ops TensorRT 10 parses. The
TorchScript exporter cannot trace scaled_dot_product_attention's `enable_gqa`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import platform
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import smolvla
from smolvla.config import ACTION, OBS_STATE, ConfigError
from smolvla.errors import SmolVLAError
from smolvla.io import write_json
from smolvla.model.vla import Observation, PrefixCache, suffix_layout
from smolvla.policy import SmolVLAPolicy
from smolvla.processing.pipeline import PolicyPostprocessor, PolicyPreprocessor
from smolvla.runtime.exported import (
    EXPORT_FILE,
    FORMAT,
    FORMAT_VERSION,
    OPSET,
    ExportedPolicy,
    available_backends,
    openvino_int8_ready,
)
from smolvla.stats_check import stats_range

FP32_TOLERANCE = 1e-4  # max |torch fp32 - exported fp32| over a chunk of normalized actions


class ExportError(SmolVLAError, RuntimeError):
    """A policy that cannot be exported, or an export whose graphs do not reproduce the policy."""


class PrefixGraph(nn.Module):
    """images (1, 3, H, W) in [0, 1] per present camera, tokens (1, L), token_mask (1, L), state
    (1, state_dim) normalized -> prefix_pad (1, P) and the k, v each expert layer reads."""

    def __init__(self, policy: SmolVLAPolicy, n_empty: int) -> None:
        super().__init__()
        self.policy, self.n_empty = policy, n_empty

    def forward(
        self, tokens: torch.Tensor, token_mask: torch.Tensor, state: torch.Tensor, *images: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        p, b = self.policy, state.shape[0]
        pixels = [p.model_image(img) for img in images]
        masks = [torch.ones(b, dtype=torch.bool)] * len(pixels)
        for _ in range(self.n_empty):  # the cameras not fed, as the policy fills them: all -1, masked out
            pixels.append(torch.full_like(pixels[-1], -1.0))
            masks.append(torch.zeros(b, dtype=torch.bool))
        obs = Observation(pixels, masks, tokens, token_mask, p._pad(state, p.config.max_state_dim))
        cache = p.model.prefill(obs, use_cache=True)
        return (cache.prefix_pad, *(t for kv in cache.kv if kv is not None for t in kv))


class StepGraph(nn.Module):
    """x_t (1, S, max_action_dim), t (1,), prefix_pad and the prefix k, v -> velocity (1, S, A)."""

    def __init__(self, policy: SmolVLAPolicy, layers: list[int]) -> None:
        super().__init__()
        self.policy, self.layers = policy, layers

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, prefix_pad: torch.Tensor, *kv: torch.Tensor
    ) -> torch.Tensor:
        n = len(self.policy.model.vlm_with_expert.kinds)
        cache: list = [None] * n
        for j, i in enumerate(self.layers):
            cache[i] = (kv[2 * j], kv[2 * j + 1])
        suffix_mask, positions = suffix_layout(prefix_pad, self.policy.config.chunk_size)
        return self.policy.model.velocity(x_t, t, PrefixCache(cache, prefix_pad, suffix_mask, positions))


def _affine(fn: Callable[[torch.Tensor], torch.Tensor], n: int) -> dict[str, list[float]]:
    """fn is affine per dimension (every norm mode is): fn(x) = x * scale + offset."""
    zero, one = fn(torch.zeros(1, n, dtype=torch.float64)), fn(torch.ones(1, n, dtype=torch.float64))
    return {"scale": (one - zero)[0].tolist(), "offset": zero[0].tolist()}


def _action_range(post: PolicyPostprocessor, n: int) -> dict[str, list[float]] | None:
    stats = post.normalizer.stats.get(ACTION)
    return None if stats is None else stats_range({k: v.double().numpy() for k, v in stats.items()}, n)


def _metadata(
    policy: SmolVLAPolicy,
    pre: PolicyPreprocessor,
    post: PolicyPostprocessor,
    cams: list[str],
    layers: list[int],
    prefix_len: int,
) -> dict[str, Any]:
    cfg = policy.config
    norm: dict[str, Any] = {}
    if cfg.state_feature is not None:
        n = cfg.state_feature.shape[0]
        mode = pre.normalizer.modes.get(OBS_STATE)
        norm[OBS_STATE] = {
            "mode": None if mode is None else mode.value,
            **_affine(lambda x: pre.normalizer.normalize({OBS_STATE: x})[OBS_STATE], n),
        }
    mode = post.normalizer.modes.get(ACTION)
    norm[ACTION] = {
        "mode": None if mode is None else mode.value,
        **_affine(lambda x: post.normalizer.unnormalize({ACTION: x})[ACTION], cfg.action_feature.shape[0]),
    }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "opset": OPSET,
        "batch_size": 1,
        # the cameras fed, in prefix.onnx's input order (image_0, image_1, ...), as (3, H, W)
        "cameras": {k: list(cfg.image_features[k].shape) for k in cams},
        "state_dim": None if cfg.state_feature is None else cfg.state_feature.shape[0],
        "action_dim": cfg.action_feature.shape[0],
        "max_state_dim": cfg.max_state_dim,
        "max_action_dim": cfg.max_action_dim,
        "chunk_size": cfg.chunk_size,
        "n_action_steps": cfg.n_action_steps,
        "num_steps": cfg.num_steps,
        "prefix_length": prefix_len,
        "kv_layers": layers,
        "language": {
            "tokenizer": "tokenizer",
            "max_length": pre.max_length,
            "task_key": pre.task_key,
            "padding_side": pre.padding_side,
        },
        "rename_map": pre.rename_map,
        "normalization": norm,
        # the dataset's action min/max: the bounds a robot client enforces (None without such stats)
        "action_range": _action_range(post, cfg.action_feature.shape[0]),
        "graphs": {},
        "versions": {
            "smolvla": smolvla.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }


def _sample(policy: SmolVLAPolicy, cameras: list[str], seed: int = 0) -> dict[str, Any]:
    from smolvla.processing.pipeline import sample_observation

    obs = sample_observation(policy.config, seed)
    return {k: v for k, v in obs.items() if k in cameras or k not in policy.config.image_features}


def camera_set(policy: SmolVLAPolicy, cameras: list[str] | None) -> list[str]:
    """The cameras a runtime feeds, in the config's order: all configured ones by default; fewer where
    the config allows empty cameras (the others are filled as the policy fills them)."""
    conf = list(policy.config.image_features)
    if cameras is None:
        return conf
    unknown = [c for c in cameras if c not in conf]
    missing = [c for c in conf if c not in cameras]
    if unknown or not cameras or len(missing) > policy.config.empty_cameras:
        raise ConfigError(
            f"cameras: got {cameras}, expected at least {len(conf) - policy.config.empty_cameras} of the "
            f"policy's cameras {conf} (empty_cameras={policy.config.empty_cameras})"
        )
    return [c for c in conf if c in cameras]


def _onnx_export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str]) -> None:
    # The dynamo exporter logs every decomposition at INFO and warns about its own internals.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=True,
            opset_version=OPSET,
            input_names=inputs,
            output_names=outputs,
            external_data=True,
            verbose=False,
        )


class _DropQuantizerAdvice(logging.Filter):
    """ONNX Runtime's quantizer warns on the root logger that shape inference could run first; the
    export runs it on graphs whose shapes are all static, so the advice does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF prints tables and ONNX Runtime's quantizer its advice: the export prints its own progress."""
    drop = _DropQuantizerAdvice()
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(drop)
    try:
        if importlib.util.find_spec("nncf") is not None:
            import nncf

            nncf.set_log_level(logging.ERROR)
        yield
    finally:
        for h in handlers:
            h.removeFilter(drop)


def _quantize_ort(src: Path, dst: Path) -> None:
    """ONNX Runtime's dynamic quantization: int8 weights per output channel, activations quantized per
    call; only MatMuls with a constant weight (attention's q.k and p.v stay fp32)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm"],
        extra_options={"MatMulConstBOnly": True},
        use_external_data_format=True,
    )


def _compress_openvino(src: Path, dst: Path) -> None:
    """OpenVINO's int8 weight compression (NNCF, data-free): int8 weights, fp32 activations."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(src))
    ov.save_model(nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM), str(dst))


def export_policy(
    policy: SmolVLAPolicy,
    pre: PolicyPreprocessor,
    post: PolicyPostprocessor,
    output_dir: str | Path,
    *,
    cameras: list[str] | None = None,
    int8: bool = True,
    check: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Writes the two graphs for the camera set `cameras` (see `camera_set`), their int8 forms
    (`int8`: ONNX Runtime's; OpenVINO's where openvino and nncf are installed), the tokenizer and
    smolvla_export.json into `output_dir`. With `check`, each backend runs a chunk beside the PyTorch
    policy (same observation and noise): fp32 must agree within 1e-4 (ExportError otherwise), int8
    and bf16 errors are recorded. Returns the metadata written."""
    if policy.inference_mode not in (None, "fp32"):
        raise ExportError(
            f"policy: prepared for inference ({policy.inference_mode}); export a checkpoint loaded "
            "without inference_mode (or with 'fp32'): int8 and bf16 forms are made from the fp32 graphs"
        )
    if pre.tokenizer is None:
        raise ExportError("preprocessor: has no tokenizer step; the exported runtime tokenizes the task")
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()) and not (out / EXPORT_FILE).is_file():
        raise ConfigError(f"--output_dir: {out} exists and is not an export; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    # the graphs are fp32 (the int8 and bf16 forms are made from them): a policy set to bf16 is
    # converted back, in place
    policy = policy.eval().float() if policy.inference_mode is None else policy.eval()
    cfg = policy.config
    cams = camera_set(policy, cameras)

    # Trace inputs: a sample observation through the preprocessor, padded to the static token length.
    sample = _sample(policy, cams)
    batch = pre(sample)
    ids, mask = pre.tokenizer.encode(sample[pre.task_key], pre.max_length, "max_length")
    tokens, token_mask = torch.from_numpy(ids), torch.from_numpy(mask)
    state = batch[OBS_STATE].float() if OBS_STATE in batch else torch.zeros(1, 0)
    images = [batch[k].float() for k in cams]
    prefix = PrefixGraph(policy, len(cfg.image_features) - len(cams))
    with torch.no_grad():
        prefix_out = prefix(tokens, token_mask, state, *images)
    vwe = policy.model.vlm_with_expert
    layers = [i for i in range(len(vwe.kinds)) if vwe.expert_layer(i) is not None]
    kv_names = [f"{kind}_{i}" for i in layers for kind in ("k", "v")]
    meta = _metadata(policy, pre, post, cams, layers, int(prefix_out[0].shape[1]))

    t0 = time.perf_counter()
    log(f"exporting prefix.onnx ({len(cams)} camera(s), {pre.max_length} tokens) ...")
    image_names = [f"image_{j}" for j in range(len(cams))]
    _onnx_export(
        prefix,
        (tokens, token_mask, state, *images),
        out / "prefix.onnx",
        ["tokens", "token_mask", "state", *image_names],
        ["prefix_pad", *kv_names],
    )
    x_t = torch.zeros(1, cfg.chunk_size, cfg.max_action_dim)
    t = torch.ones(1)
    log("exporting step.onnx ...")
    _onnx_export(
        StepGraph(policy, layers),
        (x_t, t, prefix_out[0], *prefix_out[1:]),
        out / "step.onnx",
        ["x_t", "t", "prefix_pad", *kv_names],
        ["velocity"],
    )
    meta["graphs"]["fp32"] = {"prefix": "prefix.onnx", "step": "step.onnx"}
    meta["export_seconds"] = {"fp32": round(time.perf_counter() - t0, 1)}
    pre.tokenizer.save(out / "tokenizer")
    if int8:
        t0 = time.perf_counter()
        log("quantizing for ONNX Runtime (dynamic int8) ...")
        with _quiet():
            for g in ("prefix", "step"):
                _quantize_ort(out / f"{g}.onnx", out / f"{g}.int8.onnx")
        meta["graphs"]["int8"] = {"prefix": "prefix.int8.onnx", "step": "step.int8.onnx"}
        meta["export_seconds"]["int8"] = round(time.perf_counter() - t0, 1)
        if openvino_int8_ready():
            t0 = time.perf_counter()
            log("compressing for OpenVINO (int8 weights) ...")
            (out / "openvino").mkdir(exist_ok=True)
            with _quiet():
                for g in ("prefix", "step"):
                    _compress_openvino(out / f"{g}.onnx", out / "openvino" / f"{g}.int8.xml")
            meta["graphs"]["openvino-int8"] = {
                "prefix": "openvino/prefix.int8.xml",
                "step": "openvino/step.int8.xml",
            }
            meta["export_seconds"]["openvino-int8"] = round(time.perf_counter() - t0, 1)
        else:
            log("openvino or nncf not installed: no OpenVINO int8 form (pip install 'smolvla[openvino]')")
    meta["files"] = {
        str(p.relative_to(out)): p.stat().st_size
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != EXPORT_FILE
    }
    write_json(out / EXPORT_FILE, meta)
    if check:
        meta["check"] = check_export(policy, pre, post, out, log=log)
        write_json(out / EXPORT_FILE, meta)
    return meta


def check_export(
    policy: SmolVLAPolicy,
    pre: PolicyPreprocessor,
    post: PolicyPostprocessor,
    folder: Path,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Each available backend x precision against the PyTorch policy on one observation and noise:
    max and mean |difference| of the normalized action chunk. fp32 beyond 1e-4 raises ExportError."""
    cfg = policy.config
    sample = _sample(policy, list(ExportedPolicy.read_metadata(folder)["cameras"]), seed)
    noise = np.random.default_rng(seed).standard_normal((1, cfg.chunk_size, cfg.max_action_dim))
    noise = noise.astype(np.float32)
    batch = pre(sample)
    with torch.no_grad():
        ref = policy.predict_action_chunk(batch, torch.from_numpy(noise))[0].numpy()
    report: dict[str, Any] = {"reference": "torch fp32", "units": "normalized actions", "results": {}}
    for backend in available_backends():
        for precision in ExportedPolicy.precisions(folder, backend):
            runtime = ExportedPolicy(folder, backend=backend, precision=precision)
            got = runtime.predict_normalized(sample, noise)
            err = np.abs(got - ref)
            r = {"max_abs": float(err.max()), "mean_abs": float(err.mean())}
            report["results"][f"{backend}/{precision}"] = r
            log(f"  {backend} {precision}: max |error| {r['max_abs']:.2e}, mean {r['mean_abs']:.2e}")
            if precision == "fp32" and r["max_abs"] > FP32_TOLERANCE:
                raise ExportError(
                    f"{folder}: {backend} fp32 actions differ from PyTorch's by up to {r['max_abs']:.3g} "
                    f"(tolerance {FP32_TOLERANCE}); the export is not faithful"
                )
    return report


def export_checkpoint(path: str | Path, output_dir: str | Path, **kw: Any) -> dict[str, Any]:
    """`export_policy` for a checkpoint folder (or hub repo id) with its saved processors."""
    from smolvla.processing import make_pre_post_processors

    policy = SmolVLAPolicy.from_pretrained(path)
    pre, post = make_pre_post_processors(policy.config, pretrained_path=path)
    return export_policy(policy, pre, post, output_dir, **kw)


# --------------------------------------------------------------------------------------------------
# Command line


@dataclass(frozen=True)
class ExportPolicyRef:
    path: str | None = None  # checkpoint folder or hub repo id (with its processor files)


@dataclass(frozen=True)
class ExportPipelineConfig:
    """Export a policy to ONNX (prefix and step graphs) for ONNX Runtime, OpenVINO and TensorRT."""

    policy: ExportPolicyRef = field(default_factory=ExportPolicyRef)
    output_dir: str | None = None  # the export folder to write (new or empty)
    # the cameras the robot feeds, space-separated (None: all the policy's); fewer only where the
    # config's empty_cameras allows
    cameras: list[str] | None = None
    # also write int8 forms: ONNX Runtime's dynamic quantization, OpenVINO's int8 weights (needs nncf)
    int8: bool = True
    # run each backend beside PyTorch on a sample observation: fp32 within 1e-4, int8 errors recorded
    check: bool = True


def run_export(cfg: ExportPipelineConfig) -> None:
    """`smolvla export`: writes the export folder and prints a summary line per file group."""
    from smolvla.processing import make_pre_post_processors

    if not cfg.policy.path:
        raise ConfigError("--policy.path is required: the checkpoint folder or hub repo id to export")
    if not cfg.output_dir:
        raise ConfigError("--output_dir is required: the export folder to write")
    t0 = time.perf_counter()
    policy = SmolVLAPolicy.from_pretrained(cfg.policy.path)
    pre, post = make_pre_post_processors(policy.config, pretrained_path=cfg.policy.path)
    meta = export_policy(
        policy, pre, post, cfg.output_dir, cameras=cfg.cameras, int8=cfg.int8, check=cfg.check
    )
    total = sum(meta["files"].values())
    print(
        f"wrote {cfg.output_dir}: {len(meta['files'])} files, {total / 2**30:.2f} GB, forms "
        f"{sorted(meta['graphs'])}, in {time.perf_counter() - t0:.0f} s"
    )
