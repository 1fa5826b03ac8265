"""The exported policy's runtime: numpy, tokenizers and a backend (ONNX Runtime or OpenVINO); no torch.

`ExportedPolicy(folder, backend, precision)` reads what `smolvla export` wrote (smolvla_export.json,
prefix/step graphs, tokenizer), takes raw observations (camera frames as a robot gives them, the raw
state, the task) and returns raw actions, as `SmolVLAPolicy` with its processors does:

    tokens  = tokenizer(task + "\\n"), padded to max_length            (smolvla.processing.tokenizer)
    state   = raw_state * scale + offset                                (the checkpoint's normalizer, affine)
    kv      = prefix(images, tokens, state)                             (once per chunk)
    x       = euler(noise, num_steps, v = step(x, t, kv))               (smolvla.flow: the one loop)
    actions = x[..., :action_dim] * scale + offset                      (the unnormalizer, affine)

Backends x precisions: onnxruntime fp32 and int8 (dynamic quantization; CPU, or CUDA / TensorRT
execution providers where installed), openvino fp32, bf16 (the prefix graph with OpenVINO's bf16
hint, where the CPU runs bf16 natively; the step stays fp32) and int8 (NNCF weight compression).
"""

from __future__ import annotations

import importlib.util
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from smolvla.errors import MissingFileError, SmolVLAError
from smolvla.flow import euler
from smolvla.io import read_json_object
from smolvla.processing.tokenizer import LanguageTokenizer
from smolvla.stats_check import stats_range

EXPORT_FILE = "smolvla_export.json"
FORMAT = "smolvla-onnx"
FORMAT_VERSION = 1
OPSET = 18
BACKENDS = ("onnxruntime", "openvino")
OBS_STATE = "observation.state"
REQUIRED_KEYS = (
    "cameras",
    "state_dim",
    "action_dim",
    "max_action_dim",
    "chunk_size",
    "n_action_steps",
    "num_steps",
    "kv_layers",
    "language",
    "normalization",
    "graphs",
)


class ExportedPolicyError(SmolVLAError, ValueError):
    """An export folder, a backend choice or an observation the exported runtime cannot take."""


def available_backends() -> list[str]:
    """The exported-graph backends importable here."""
    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]


def openvino_int8_ready() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf"))


def openvino_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (AVX-512 BF16 or AMX)."""
    if importlib.util.find_spec("openvino") is None:
        return False
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


# --------------------------------------------------------------------------------------------------
# Backends: a graph is a callable from named numpy inputs to the outputs in order


Graph = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def _onnxruntime_graph(path: Path, device: str, threads: int | None) -> Graph:
    import onnxruntime as ort

    providers = {
        "cpu": ["CPUExecutionProvider"],
        "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    }
    if device not in providers:
        raise ExportedPolicyError(
            f"device: got {device!r}, expected one of {list(providers)} for onnxruntime"
        )
    have = ort.get_available_providers()
    if providers[device][0] not in have:
        raise ExportedPolicyError(
            f"device: {device!r} needs ONNX Runtime's {providers[device][0]}, which this onnxruntime "
            f"build lacks (it has {have}); install onnxruntime-gpu for cuda and tensorrt"
        )
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # the optimizer's notes about unused initializers are not for users
    session = ort.InferenceSession(str(path), opts, providers=providers[device])

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return session.run(None, feeds)

    return run


def _openvino_graph(path: Path, device: str, threads: int | None, bf16: bool) -> Graph:
    import openvino as ov

    core = ov.Core()
    dev = device.upper()
    if dev not in core.available_devices:
        raise ExportedPolicyError(
            f"device: got {device!r}, expected one of OpenVINO's devices here {core.available_devices}"
        )
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32"}
    if threads is not None and dev == "CPU":
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(str(path)), dev, config)
    request = compiled.create_infer_request()
    outputs = compiled.outputs

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = request.infer(feeds)
        return [np.array(result[o]) for o in outputs]  # copies: the request reuses its buffers

    return run


# --------------------------------------------------------------------------------------------------
# The policy


class ExportedPolicy:
    """A policy exported by `smolvla export`, run by ONNX Runtime or OpenVINO."""

    def __init__(
        self,
        folder: str | Path,
        backend: str = "onnxruntime",
        precision: str = "fp32",
        device: str = "cpu",
        threads: int | None = None,
        num_steps: int | None = None,
        n_action_steps: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.meta = self.read_metadata(self.folder)
        if backend not in BACKENDS:
            raise ExportedPolicyError(f"backend: got {backend!r}, expected one of {list(BACKENDS)}")
        if importlib.util.find_spec(backend) is None:
            raise ExportedPolicyError(
                f"backend: {backend!r} is not installed (pip install 'smolvla[{backend}]')"
            )
        have = self.precisions(self.folder, backend)
        if precision not in have:
            raise ExportedPolicyError(
                f"precision: {backend} {precision!r} is not available for {self.folder} (it has {have}"
                + ("; bf16 needs a CPU with native bf16" if precision == "bf16" else "")
                + ("; export with --int8=true" if precision == "int8" else "")
                + ")"
            )
        for name, v, hi in (
            ("num_steps", num_steps, 10**6),
            ("n_action_steps", n_action_steps, self.meta["chunk_size"]),
        ):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi):
                raise ExportedPolicyError(f"{name}: got {v!r}, expected an integer in [1, {hi}]")
        self.backend, self.precision, self.device = backend, precision, device
        m = self.meta
        self.num_steps = num_steps or m["num_steps"]
        self.chunk_size, self.n_action_steps = m["chunk_size"], n_action_steps or m["n_action_steps"]
        self.action_dim, self.state_dim = m["action_dim"], m["state_dim"]
        self.cameras: dict[str, tuple[int, ...]] = {k: tuple(v) for k, v in m["cameras"].items()}
        self.empty_cameras = 0  # the export's camera set is fixed; cameras it leaves out are filled inside
        lang = m["language"]
        self.tokenizer = LanguageTokenizer.from_dir(self.folder / lang["tokenizer"])
        self.max_length, self.task_key = lang["max_length"], lang["task_key"]
        self.rename_map: dict[str, str] = m.get("rename_map") or {}
        norm = m["normalization"]
        self._state_norm = _affine(norm.get(OBS_STATE))
        self._action_unnorm = _affine(norm.get("action"))
        self._kv_names = [f"{kind}_{i}" for i in m["kv_layers"] for kind in ("k", "v")]
        # bf16 is OpenVINO running the fp32 graphs with a bf16 hint; its int8 is its own compressed IR
        form = {"bf16": "fp32", "int8": "openvino-int8" if backend == "openvino" else "int8"}
        files = m["graphs"][form.get(precision, precision)]
        paths = {g: self.folder / files[g] for g in ("prefix", "step")}
        for p in paths.values():
            if not p.is_file():
                raise MissingFileError(f"{p}: missing from the export (listed in {EXPORT_FILE})")
        if backend == "onnxruntime":
            self._prefix = _onnxruntime_graph(paths["prefix"], device, threads)
            self._step = _onnxruntime_graph(paths["step"], device, threads)
        else:
            # bf16 runs the prefix (vision tower and VLM, most of the time) in bf16 and the denoising
            # step in fp32: with the step in bf16 too, OpenVINO's actions drift (mean error 0.074,
            # max 0.26 on the base model, 2 cameras) where this split stays at 0.0015, below torch's
            # own bf16 (0.003); the step is the smaller part (0.9 of 1.6 s there)
            self._prefix = _openvino_graph(paths["prefix"], device, threads, precision == "bf16")
            self._step = _openvino_graph(paths["step"], device, threads, False)
        self._queue: deque[np.ndarray] = deque()
        self.rng = np.random.default_rng()

    # -- the export folder ---------------------------------------------------------------------------

    @staticmethod
    def read_metadata(folder: str | Path) -> dict[str, Any]:
        file = Path(folder) / EXPORT_FILE
        if not file.is_file():
            raise MissingFileError(
                f"{file}: not found; {folder} is not an export (make one with `smolvla export "
                "--policy.path=CHECKPOINT --output_dir=DIR`)"
            )
        meta = read_json_object(file, ExportedPolicyError)
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ExportedPolicyError(
                f"{file}: format {meta.get('format')!r} version {meta.get('format_version')!r}, expected "
                f"{FORMAT!r} version {FORMAT_VERSION}; re-export with this smolvla"
            )
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise ExportedPolicyError(f"{file}: missing {missing}; re-export with `smolvla export`")
        return meta

    @staticmethod
    def precisions(folder: str | Path, backend: str) -> list[str]:
        """The precisions `backend` can run from this export on this machine."""
        graphs = ExportedPolicy.read_metadata(folder)["graphs"]
        if backend == "onnxruntime":
            return [p for p in ("fp32", "int8") if p in graphs]
        out = ["fp32"] if "fp32" in graphs else []
        if out and openvino_bf16():
            out.append("bf16")
        if "openvino-int8" in graphs:
            out.append("int8")
        return out

    # -- inputs --------------------------------------------------------------------------------------

    def _image(self, key: str, v: Any) -> np.ndarray:
        c, h, w = self.cameras[key]
        if not isinstance(v, np.ndarray):
            raise ExportedPolicyError(f"{key}: got {type(v).__name__}, expected a numpy array [{h}, {w}, 3]")
        if v.ndim == 4 and v.shape[0] == 1:
            v = v[0]
        if v.ndim == 3 and v.shape[-1] == 3 and v.shape[0] != 3:
            v = v.transpose(2, 0, 1)  # channels last, as cameras give frames
        if v.shape != (c, h, w):
            raise ExportedPolicyError(
                f"{key}: got shape {v.shape}, expected [{h}, {w}, 3] or [3, {h}, {w}]: the export's graphs "
                f"are built for this camera size (re-export for another)"
            )
        if v.dtype == np.uint8:
            return (v.astype(np.float32) / 255.0)[None]
        if v.dtype.kind != "f":
            raise ExportedPolicyError(f"{key}: got dtype {v.dtype}, expected uint8 or float in [0, 1]")
        v = v.astype(np.float32)
        lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-3 or hi > 1 + 1e-3:
            raise ExportedPolicyError(f"{key}: values in [{lo:.3g}, {hi:.3g}], expected [0, 1]")
        return v[None]

    def prefix_inputs(self, observation: dict[str, Any]) -> dict[str, np.ndarray]:
        """The prefix graph's inputs from a raw observation, every field checked."""
        if not isinstance(observation, dict):
            raise ExportedPolicyError(f"observation: got {type(observation).__name__}, expected a dict")
        obs = {self.rename_map.get(k, k): v for k, v in observation.items()}
        feeds: dict[str, np.ndarray] = {}
        for j, key in enumerate(self.cameras):
            if key not in obs:
                raise ExportedPolicyError(
                    f"{key}: missing from the observation (the export takes cameras {list(self.cameras)}; "
                    f"it has keys {sorted(obs)})"
                )
            feeds[f"image_{j}"] = self._image(key, obs[key])
        task = obs.get(self.task_key)
        if isinstance(task, (list, tuple)) and len(task) == 1:
            task = task[0]
        if not isinstance(task, str):
            raise ExportedPolicyError(
                f"{self.task_key}: got {task!r:.60}, expected the instruction as a string"
            )
        tokens, mask = self.tokenizer.encode([task], self.max_length, "max_length")
        feeds["tokens"], feeds["token_mask"] = tokens, mask
        feeds["state"] = self._state(obs)
        return feeds

    def _state(self, obs: dict[str, Any]) -> np.ndarray:
        if self.state_dim is None:
            return np.zeros((1, 0), np.float32)
        if OBS_STATE not in obs:
            raise ExportedPolicyError(f"{OBS_STATE}: missing from the observation (keys: {sorted(obs)})")
        s = np.asarray(obs[OBS_STATE])
        if s.dtype.kind not in "fiu" or s.reshape(-1).shape != (self.state_dim,):
            raise ExportedPolicyError(
                f"{OBS_STATE}: got {s.dtype} shape {s.shape}, expected {self.state_dim} numbers"
            )
        s = s.reshape(1, -1).astype(np.float64)
        if not np.isfinite(s).all():
            raise ExportedPolicyError(f"{OBS_STATE}: contains NaN or inf")
        scale, offset = self._state_norm
        return (s * scale + offset).astype(np.float32)

    def noise(self, seed: int) -> np.ndarray:
        """Noise drawn by numpy's generator from `seed` (torch's generator is not available here)."""
        shape = (1, self.chunk_size, self.meta["max_action_dim"])
        return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)

    def _noise(self, noise: np.ndarray | None) -> np.ndarray:
        shape = (1, self.chunk_size, self.meta["max_action_dim"])
        if noise is None:
            return self.rng.standard_normal(shape).astype(np.float32)
        noise = np.asarray(noise, dtype=np.float32)
        if noise.shape == shape[1:]:
            noise = noise[None]
        if noise.shape != shape:
            raise ExportedPolicyError(f"noise: got shape {noise.shape}, expected {shape}")
        return noise

    # -- inference -----------------------------------------------------------------------------------

    def prefill(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The prefix graph: prefix_pad and the k/v each expert layer reads, by the step graph's names."""
        out = self._prefix(feeds)
        return dict(zip(["prefix_pad", *self._kv_names], out, strict=True))

    def velocity(self, x_t: np.ndarray, t: float, cache: dict[str, np.ndarray]) -> np.ndarray:
        """One denoising step against the prefilled prefix: (1, S, max_action_dim)."""
        return self._step({"x_t": x_t, "t": np.full((1,), t, np.float32), **cache})[0]

    def sample(
        self, cache: dict[str, np.ndarray], noise: np.ndarray | None = None, num_steps: int | None = None
    ) -> np.ndarray:
        """The Euler loop against a prefilled prefix: (1, S, max_action_dim) normalized, padded."""
        return euler(
            self._noise(noise),
            num_steps or self.num_steps,
            lambda x_t, t: self.velocity(x_t.astype(np.float32), t, cache),
        )

    def predict_normalized(
        self, observation: dict[str, Any], noise: np.ndarray | None = None, num_steps: int | None = None
    ) -> np.ndarray:
        """A chunk of normalized actions (chunk_size, action_dim), as `SmolVLAPolicy.predict_action_chunk`."""
        x = self.sample(self.prefill(self.prefix_inputs(observation)), noise, num_steps)
        return x[0, :, : self.action_dim].astype(np.float32)

    def predict_chunk(
        self, observation: dict[str, Any], noise: np.ndarray | None = None, num_steps: int | None = None
    ) -> np.ndarray:
        """A chunk of robot actions (chunk_size, action_dim) float32, unnormalized."""
        scale, offset = self._action_unnorm
        x = self.predict_normalized(observation, noise, num_steps).astype(np.float64)
        return (x * scale + offset).astype(np.float32)

    def reset(self, seed: int | None = None) -> None:
        """Empties the action queue: call at the start of each episode. `seed`: the noise of the
        chunks that follow is drawn from it (episodes replay exactly)."""
        self._queue.clear()
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        """One robot action (action_dim,); a new chunk every n_action_steps calls."""
        if not self._queue:
            self._queue.extend(self.predict_chunk(observation)[: self.n_action_steps])
        return self._queue.popleft()

    def state_normalization(self) -> dict[str, list[float]] | None:
        if self.state_dim is None:
            return None
        scale, offset = self._state_norm
        n = (self.state_dim,)
        return {"offset": np.broadcast_to(offset, n).tolist(), "scale": np.broadcast_to(scale, n).tolist()}

    def action_range(self) -> dict[str, list[float]] | None:
        """The dataset's action min/max as exported (None for exports made before it was written)."""
        return stats_range(self.meta.get("action_range"), self.action_dim)


def _affine(entry: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) float64; identity where the feature is not normalized."""
    if entry is None:
        return np.ones(1), np.zeros(1)
    return np.asarray(entry["scale"], np.float64), np.asarray(entry["offset"], np.float64)
