"""One way to load a policy for inference, whatever runs it: `load_policy(path, backend, precision)`.

    backend    torch | onnxruntime | openvino | auto
    precision  fp32 | bf16 | int8 | auto   (None with torch: the plain policy, as trained)

Every loaded policy answers the same calls (`Predictor`): raw observation in, raw actions out. A
checkpoint folder asked for onnxruntime or openvino is exported once into the cache
(`$SMOLVLA_CACHE`, default `~/.cache/smolvla`) and the export is reused; an export folder (from
`smolvla export`) runs without torch.

"auto" decides by measurement, not by CPU flags: each available backend x precision runs the policy's
real shapes (its cameras, tokens, chunk, denoising steps) on a sample observation, and the fastest
whose actions stay within `max_error` of fp32's (mean |error| in normalized units) wins. The table is
cached per machine (CPU model, flags, threads) and policy shape, so it is measured once;
`refresh=True` measures again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from smolvla.config import ConfigError
from smolvla.io import read_json_object, write_json
from smolvla.runtime.exported import (
    EXPORT_FILE,
    ExportedPolicy,
    available_backends,
)
from smolvla.stats_check import stats_range

BACKENDS = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
MAX_ERROR = 0.05  # auto's bound: mean |action - fp32 action|, normalized units


class Predictor(Protocol):
    """What every loaded policy answers (`TorchPredictor`, `ExportedPolicy`)."""

    backend: str
    precision: str
    device: str
    chunk_size: int
    n_action_steps: int
    action_dim: int
    state_dim: int | None
    cameras: dict[str, tuple[int, ...]]
    empty_cameras: int
    num_steps: int

    def predict_chunk(self, observation: dict[str, Any], noise: np.ndarray | None = None) -> np.ndarray: ...

    def predict_normalized(
        self, observation: dict[str, Any], noise: np.ndarray | None = None
    ) -> np.ndarray: ...

    def noise(self, seed: int) -> np.ndarray: ...

    def reset(self, seed: int | None = None) -> None: ...

    def select_action(self, observation: dict[str, Any]) -> np.ndarray: ...

    def state_normalization(self) -> dict[str, list[float]] | None: ...

    def action_range(self) -> dict[str, list[float]] | None: ...


class TorchPredictor:
    """A `SmolVLAPolicy` with its processors behind the `Predictor` calls."""

    backend = "torch"

    def __init__(self, policy: Any, pre: Any, post: Any, num_steps: int | None = None) -> None:
        self.policy, self.pre, self.post = policy.eval(), pre, post
        cfg = policy.config
        self.precision = policy.inference_mode or "fp32"
        self.chunk_size, self.n_action_steps = cfg.chunk_size, cfg.n_action_steps
        self.action_dim = cfg.action_feature.shape[0]
        self.state_dim = None if cfg.state_feature is None else cfg.state_feature.shape[0]
        self.cameras = {k: tuple(f.shape) for k, f in cfg.image_features.items()}
        self.empty_cameras = cfg.empty_cameras
        self.num_steps = num_steps or cfg.num_steps
        self.max_action_dim = cfg.max_action_dim
        self.device = str(next(policy.parameters()).device)

    def preprocess(self, observation: dict[str, Any]) -> dict[str, Any]:
        """A raw observation (numpy frames uint8 [H, W, 3] or float [3, H, W], state, task) -> batch."""
        import torch

        raw: dict[str, Any] = {}
        for k, v in observation.items():
            if isinstance(v, np.ndarray):
                v = np.ascontiguousarray(v.astype(np.float32) if v.dtype.kind == "f" else v)
                # frames decoded from a message are read-only views of its bytes; torch wants to own them
                v = torch.from_numpy(v if v.flags.writeable else v.copy())
            raw[k] = v
        return self.pre(raw)

    def postprocess(self, chunk: Any) -> np.ndarray:
        return self.post(chunk)[0].float().cpu().numpy().astype(np.float32)

    def _chunk(self, observation: dict[str, Any], noise: np.ndarray | None) -> Any:
        import torch

        device = next(self.policy.parameters()).device
        t = (
            None
            if noise is None
            else torch.as_tensor(np.asarray(noise, np.float32)).reshape(1, *noise.shape[-2:])
        )
        with torch.no_grad():
            return self.policy.predict_action_chunk(
                self.preprocess(observation), None if t is None else t.to(device), self.num_steps
            )

    def predict_chunk(self, observation: dict[str, Any], noise: np.ndarray | None = None) -> np.ndarray:
        return self.postprocess(self._chunk(observation, noise))

    def predict_normalized(self, observation: dict[str, Any], noise: np.ndarray | None = None) -> np.ndarray:
        return self._chunk(observation, noise)[0].float().cpu().numpy()

    def noise(self, seed: int) -> np.ndarray:
        """Noise drawn by torch's generator from `seed` (what `smolvla serve` always drew)."""
        import torch

        g = torch.Generator().manual_seed(seed)
        return torch.randn(1, self.chunk_size, self.max_action_dim, generator=g).numpy()

    def reset(self, seed: int | None = None) -> None:
        """Empties the action queue; `seed`: torch's global seed, from which the noise is drawn."""
        if seed is not None:
            import torch

            torch.manual_seed(seed)
        self.policy.reset()

    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        import torch

        with torch.no_grad():
            action = self.policy.select_action(self.preprocess(observation))
        return self.post(action)[0].float().cpu().numpy()

    def state_normalization(self) -> dict[str, list[float]] | None:
        """Per-dimension affine map raw -> normalized state (every norm mode is affine), so a client can
        compare states on the policy's own scale without the stats files."""
        import torch

        if self.state_dim is None:
            return None
        n, norm = self.state_dim, self.pre.normalizer
        zero = norm.normalize({"observation.state": torch.zeros(1, n)})["observation.state"][0]
        one = norm.normalize({"observation.state": torch.ones(1, n)})["observation.state"][0]
        return {"offset": zero.tolist(), "scale": (one - zero).tolist()}

    def action_range(self) -> dict[str, list[float]] | None:
        """The dataset's per-dimension action min/max, from the checkpoint's stats."""
        stats = self.post.normalizer.stats.get("action")
        if stats is None:
            return None
        return stats_range({k: v.detach().cpu().double().numpy() for k, v in stats.items()}, self.action_dim)


# --------------------------------------------------------------------------------------------------
# Loading


def is_export(path: str | Path) -> bool:
    return (Path(path) / EXPORT_FILE).is_file()


def cache_dir() -> Path:
    return Path(os.environ.get("SMOLVLA_CACHE") or Path.home() / ".cache" / "smolvla")


def _checkpoint_key(folder: Path) -> str:
    """Changes when the checkpoint's files change (path, sizes, modification times), or, for a LoRA
    adapter, its base's."""
    from smolvla.hub import adapter_base

    h = hashlib.sha256(str(folder.resolve()).encode())
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}".encode())
    base = adapter_base(folder)
    if base is not None:
        h.update(_checkpoint_key(base).encode())
    return h.hexdigest()[:16]


def ensure_export(path: str | Path, log: Callable[[str], None] = print) -> Path:
    """The export of a checkpoint (folder or hub repo id): `path` itself if it is one, else made once
    into the cache and reused."""
    if is_export(path):
        return Path(path)
    from smolvla.hub import resolve_dir

    folder = resolve_dir(str(path), allow_patterns=["*.json", "*.safetensors", "vlm/*", "tokenizer/*"])
    out = cache_dir() / "exports" / _checkpoint_key(folder)
    if not is_export(out):
        from smolvla.runtime.export import export_checkpoint

        log(f"exporting {folder} to {out} (once; later loads reuse it) ...")
        tmp = out.with_name(out.name + ".partial")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        export_checkpoint(folder, tmp, log=log)
        tmp.rename(out)
    return out


def check_choice(backend: str, precision: str | None) -> None:
    """Raises ConfigError naming the flag when the backend or precision does not exist (or is not
    installed)."""
    if backend not in (*BACKENDS, "auto"):
        raise ConfigError(f"--policy.backend: got {backend!r}, expected 'auto' or one of {list(BACKENDS)}")
    if precision is not None and precision not in (*PRECISIONS, "auto"):
        raise ConfigError(
            f"--policy.inference_mode: got {precision!r}, expected 'auto' or one of {list(PRECISIONS)}"
        )
    if backend in ("onnxruntime", "openvino") and importlib.util.find_spec(backend) is None:
        raise ConfigError(f"--policy.backend={backend}: not installed (pip install 'smolvla[{backend}]')")


def load_policy(
    path: str | Path,
    backend: str = "torch",
    precision: str | None = None,
    *,
    device: str = "cpu",
    num_steps: int | None = None,
    n_action_steps: int | None = None,
    threads: int | None = None,
    refresh: bool = False,
    max_error: float = MAX_ERROR,
    log: Callable[[str], None] = print,
) -> Predictor:
    """A policy ready for inference (see the module doc). `precision` None: fp32 for the exported
    backends, the plain (unprepared) policy for torch."""
    check_choice(backend, precision)
    if backend == "auto" or precision == "auto":
        table = measure(
            path,
            backend,
            precision,
            refresh=refresh,
            max_error=max_error,
            threads=threads,
            num_steps=num_steps,
            log=log,
        )
        backend, precision = table["choice"]["backend"], table["choice"]["precision"]
        log(f"auto: {backend} {precision} (measured {table['measured_at']}; see `smolvla info --speed`)")
    if backend == "torch":
        if is_export(path):
            raise ConfigError(
                f"--policy.path: {path} is an export (ONNX graphs): run it with --policy.backend="
                "onnxruntime or openvino, or point --policy.path at the checkpoint for torch"
            )
        from smolvla.policy import SmolVLAPolicy
        from smolvla.processing import make_pre_post_processors

        given = {"num_steps": num_steps, "n_action_steps": n_action_steps}
        overrides = {k: v for k, v in given.items() if v is not None}
        policy = SmolVLAPolicy.from_pretrained(path, device=device, inference_mode=precision, **overrides)
        pre, post = make_pre_post_processors(policy.config, pretrained_path=path, device=device)
        return TorchPredictor(policy, pre, post)
    return ExportedPolicy(
        ensure_export(path, log),
        backend,
        precision or "fp32",
        device,
        threads,
        num_steps=num_steps,
        n_action_steps=n_action_steps,
    )


# --------------------------------------------------------------------------------------------------
# auto: measured


def machine_key(threads: int | None) -> dict[str, Any]:
    """What speed depends on besides the policy: the CPU model and flags, and the threads used."""
    model, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = line.split(":", 1)[1]
    except OSError:  # not Linux: the platform's name for the processor
        model = platform.processor()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "neon")
    have = [f for f in wanted if f in flags.split()]
    return {
        "cpu": model or platform.machine(),
        "flags": have,
        "threads": threads or os.cpu_count(),
        "platform": sys.platform,
    }


def _candidates(
    backend: str, precision: str | None, path: str | Path, log: Callable[[str], None]
) -> list[tuple[str, str]]:
    """The (backend, precision) pairs that can run here: torch's by what this CPU and build have, the
    exported backends' by what the export holds (made first when `path` is a checkpoint)."""
    backends = [backend] if backend != "auto" else ["torch", *available_backends()]
    if is_export(path):
        backends = [b for b in backends if b != "torch"]
    out = []
    for b in backends:
        if b == "torch":
            from smolvla.hardware import int8_supported, native_bf16

            precs = [
                "fp32",
                *(["bf16"] if native_bf16("cpu") else []),
                *(["int8"] if int8_supported() else []),
            ]
        else:
            precs = ExportedPolicy.precisions(ensure_export(path, log), b)
        out += [(b, p) for p in precs if precision in (None, "auto", p)]
    return out


def _shape_key(path: str | Path) -> dict[str, Any]:
    """What speed depends on in the policy: its architecture and input shapes, not its weights."""
    if is_export(path):
        meta = ExportedPolicy.read_metadata(path)
        return {k: meta[k] for k in ("cameras", "chunk_size", "num_steps", "prefix_length", "kv_layers")}
    from smolvla.config import SmolVLAConfig
    from smolvla.hub import resolve_dir

    folder = resolve_dir(str(path), allow_patterns=["*.json", "*.safetensors", "vlm/*", "tokenizer/*"])
    cfg = SmolVLAConfig.load(folder / "config.json")
    keys = (
        "vlm_model_name",
        "num_vlm_layers",
        "num_expert_layers",
        "chunk_size",
        "num_steps",
        "tokenizer_max_length",
        "resize_imgs_with_padding",
        "max_state_dim",
        "max_action_dim",
        "expert_width_multiplier",
        "self_attn_every_n_layers",
    )
    d = cfg.to_dict()
    return {
        "config": {k: d.get(k) for k in keys},
        "cameras": {k: list(f.shape) for k, f in cfg.image_features.items()},
    }


def measure(
    path: str | Path,
    backend: str = "auto",
    precision: str | None = "auto",
    *,
    refresh: bool = False,
    max_error: float = MAX_ERROR,
    threads: int | None = None,
    num_steps: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The table auto chooses from: s/chunk and action error per backend x precision, and the choice.
    Read from the cache when this machine measured this policy shape before (unless `refresh`); the
    choice is made afresh from the cached rows, so another `max_error` needs no new measurement."""
    if not (isinstance(max_error, (int, float)) and max_error >= 0):
        raise ConfigError(f"max_error: got {max_error!r}, expected a mean action error >= 0")
    candidates = _candidates(backend, precision, path, log)
    if not candidates:
        raise ConfigError(f"auto: no backend x precision available for --policy.backend={backend}")
    key = {
        "machine": machine_key(threads),
        "policy": {**_shape_key(path), "num_steps_override": num_steps},
        "candidates": [list(c) for c in candidates],  # as JSON gives them back from the cache
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    file = cache_dir() / "auto" / f"{digest}.json"
    if file.is_file() and not refresh:
        return _choose(read_json_object(file, ConfigError), max_error)
    log(
        f"auto: measuring {len(candidates)} backend x precision pairs on this machine "
        f"(once; cached in {file})"
    )
    rows = []
    ref: np.ndarray | None = None
    sample, noise = None, None
    for b, p in sorted(candidates, key=lambda c: c[1] != "fp32"):  # an fp32 first: the reference
        t0 = time.perf_counter()
        pred = load_policy(path, b, p, threads=threads, num_steps=num_steps, log=log)
        load_s = time.perf_counter() - t0
        if sample is None:
            sample = _sample_observation(pred)
            noise = np.random.default_rng(0).standard_normal(pred.noise(0).shape).astype(np.float32)
        first = pred.predict_normalized(sample, noise)  # also warms up
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            pred.predict_normalized(sample, noise)
            times.append(time.perf_counter() - t0)
        if ref is None:
            ref = first
        err = np.abs(first - ref)
        row = {
            "backend": b,
            "precision": p,
            "s_per_chunk": round(min(times), 4),
            "load_s": round(load_s, 2),
            "error_mean": float(err.mean()),
            "error_max": float(err.max()),
        }
        rows.append(row)
        log(
            f"  {b:12s} {p:5s} {row['s_per_chunk']:.3f} s/chunk  error mean {row['error_mean']:.2e} "
            f"max {row['error_max']:.2e}"
        )
        del pred
    table = {
        **key,
        "reference": f"{rows[0]['backend']} {rows[0]['precision']}",
        "rows": rows,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    file.parent.mkdir(parents=True, exist_ok=True)
    write_json(file, table)
    return _choose(table, max_error)


def _choose(table: dict[str, Any], max_error: float) -> dict[str, Any]:
    """The fastest row whose mean action error is within `max_error` (the reference always is)."""
    rows = [{**r, "within_bound": r["error_mean"] <= max_error} for r in table["rows"]]
    best = min((r for r in rows if r["within_bound"]), key=lambda r: r["s_per_chunk"])
    choice = {"backend": best["backend"], "precision": best["precision"]}
    return {**table, "rows": rows, "max_error": max_error, "choice": choice}


def _sample_observation(pred: Predictor) -> dict[str, Any]:
    """A robot-like observation of the policy's real shapes: one frame per fed camera, a state, a task."""
    rng = np.random.default_rng(0)
    obs: dict[str, Any] = {}
    for k, (_, h, w) in pred.cameras.items():
        obs[k] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if pred.state_dim is not None:
        obs["observation.state"] = rng.standard_normal(pred.state_dim).astype(np.float32)
    obs["task"] = "pick up the red cube and put it in the box"
    return obs
