"""SmolVLA's pre/post-processing pipelines, read and written in LeRobot's on-disk format (spec §4.1).

Preprocessor (`policy_preprocessor.json`), in LeRobot's step order:
  0 rename_observations_processor, 1 to_batch_processor, 2 smolvla_new_line_processor,
  3 tokenizer_processor, 4 device_processor, 5 normalizer_processor (+ its stats safetensors).
Postprocessor (`policy_postprocessor.json`): 0 unnormalizer_processor (+ stats), 1 device_processor.

The steps are fixed, so each pipeline is one class with the steps' settings as fields rather than a
generic registry of step objects; the files stay interchangeable with LeRobot 0.6.x.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from smolvla.checkpoint import bundle_backbone_files, is_portable_name
from smolvla.config import (
    ACTION,
    OBS_ENV_STATE,
    OBS_IMAGE,
    OBS_IMAGES,
    OBS_STATE,
    OBS_TOKEN_MASK,
    OBS_TOKENS,
    TASK,
    ConfigError,
    PolicyFeature,
    SmolVLAConfig,
)
from smolvla.errors import MissingFileError
from smolvla.hub import adapter_base, resolve_dir
from smolvla.io import read_json_object, write_atomic
from smolvla.processing.images import ProcessorError, to_float_chw
from smolvla.processing.normalize import Normalizer, to_stats, unflatten_stats
from smolvla.processing.tokenizer import BUILTIN_TOKENIZERS, LanguageTokenizer, load_tokenizer

PREPROCESSOR_NAME = "policy_preprocessor"
POSTPROCESSOR_NAME = "policy_postprocessor"
PREPROCESSOR_FILE = f"{PREPROCESSOR_NAME}.json"
POSTPROCESSOR_FILE = f"{POSTPROCESSOR_NAME}.json"
PREPROCESSOR_STATE_FILE = f"{PREPROCESSOR_NAME}_step_5_normalizer_processor.safetensors"
POSTPROCESSOR_STATE_FILE = f"{POSTPROCESSOR_NAME}_step_0_unnormalizer_processor.safetensors"
# What a checkpoint download needs for the processors (not model.safetensors); newer LeRobot versions save
# the tokenizer to tokenizer/ inside the checkpoint.
PROCESSOR_FILES = ["policy_preprocessor*", "policy_postprocessor*", "tokenizer/*"]

PRE_STEPS = (
    "rename_observations_processor",
    "to_batch_processor",
    "smolvla_new_line_processor",
    "tokenizer_processor",
    "device_processor",
    "normalizer_processor",
)
POST_STEPS = ("unnormalizer_processor", "device_processor")

# DeviceProcessorStep's float_dtype names.
_FLOAT_DTYPES = {
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
}


# --------------------------------------------------------------------------------------------------
# The steps, as functions on a flat batch dict


def as_torch(batch: dict[str, Any]) -> dict[str, Any]:
    """numpy arrays and scalars become tensors (string arrays become lists); other values pass."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray):
            if v.dtype.kind in "USO":  # e.g. a task array
                v = v.tolist()
            else:
                v = torch.from_numpy(v if v.flags.writeable else v.copy())  # torch wants writable memory
        elif isinstance(v, np.generic) and v.dtype.kind not in "USO":
            v = torch.as_tensor(v)
        out[k] = v
    return out


def rename(batch: dict[str, Any], rename_map: dict[str, str]) -> dict[str, Any]:
    """Renames keys, and their `_is_pad` / `_padding_mask` companions with them."""
    if not rename_map:
        return dict(batch)
    full = dict(rename_map)
    for old, new in rename_map.items():
        for suffix in ("_is_pad", "_padding_mask"):
            full.setdefault(old + suffix, new + suffix)
    return {full.get(k, k): v for k, v in batch.items()}


def rename_stats(stats: dict[str, Any], rename_map: dict[str, str]) -> dict[str, Any]:
    """Dataset stats under the policy's feature names (LeRobot renames fine-tuning stats the same way)."""
    return {rename_map.get(k, k): v for k, v in stats.items()}


def to_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """LeRobot's to_batch_processor: a leading batch dim on unbatched state, images, action, task, index."""
    out = dict(batch)

    def unsqueeze_if(key: str, ndim: int) -> None:
        v = out.get(key)
        if isinstance(v, torch.Tensor) and v.dim() == ndim:
            out[key] = v.unsqueeze(0)

    unsqueeze_if(ACTION, 1)
    unsqueeze_if(OBS_STATE, 1)
    unsqueeze_if(OBS_ENV_STATE, 1)
    unsqueeze_if(OBS_IMAGE, 3)
    for key in list(out):
        if key.startswith(OBS_IMAGES + "."):
            unsqueeze_if(key, 3)
    if isinstance(out.get("task"), str):
        out["task"] = [out["task"]]
    unsqueeze_if("index", 0)
    unsqueeze_if("task_index", 0)
    return out


def to_device(
    batch: dict[str, Any], device: str | torch.device, float_dtype: str | None = None
) -> dict[str, Any]:
    device = torch.device(device)
    dtype = _float_dtype(float_dtype)
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            target = dtype if (dtype is not None and v.is_floating_point()) else v.dtype
            if device.type == "mps" and target == torch.float64:  # MPS has no float64 (LeRobot does the same)
                target = torch.float32
            v = v.to(device=device, dtype=target, non_blocking=device.type == "cuda")
        out[k] = v
    return out


def _float_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in _FLOAT_DTYPES:
        raise ProcessorError(
            f"device_processor.float_dtype: got {name!r}, expected one of {sorted(_FLOAT_DTYPES)}"
        )
    return _FLOAT_DTYPES[name]


# --------------------------------------------------------------------------------------------------
# Reading and writing the files


def _normalizer_config(n: Normalizer) -> dict[str, Any]:
    return {
        "eps": n.eps,
        "features": {k: f.to_dict() for k, f in n.features.items()},
        "norm_map": {t.value: m.value for t, m in n.norm_map.items()},
    }


def _write(path: Path, name: str, steps: list[dict[str, Any]]) -> None:
    # json.dump(indent=2) without a trailing newline: byte-for-byte what LeRobot writes.
    write_atomic(path, json.dumps({"name": name, "steps": steps}, indent=2))


def _save_stats(path: Path, filename: str, n: Normalizer, entry: dict[str, Any]) -> None:
    flat = n.state_dict()
    if flat:  # LeRobot writes no state file (and no state_file key) for an empty state
        write_atomic(path / filename, save(flat))
        entry["state_file"] = filename


def _read(path: Path, filename: str, expected: tuple[str, ...]) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The steps of a pipeline file by registry name, after checking every step is one we know."""
    file = path / filename
    if not file.is_file():
        raise MissingFileError(f"{filename} not found in {path}")
    d = read_json_object(file, ProcessorError)
    if not isinstance(d.get("steps"), list):
        raise ProcessorError(f"{file}: expected an object with a 'steps' list")
    steps: dict[str, dict[str, Any]] = {}
    for i, step in enumerate(d["steps"]):
        if not isinstance(step, dict):
            raise ProcessorError(f"{file}: step {i} is not an object")
        reg = step.get("registry_name")
        if reg not in expected:
            what = f"registry_name {reg!r}" if reg is not None else f"class {step.get('class')!r}"
            raise ProcessorError(
                f"{file}: step {i} has unknown {what}; a SmolVLA {filename} has steps {list(expected)}"
            )
        if reg in steps:
            raise ProcessorError(f"{file}: step {reg!r} appears twice")
        config = step.get("config", {})
        if not isinstance(config, dict):
            raise ProcessorError(f"{file}: step {i} ({reg}): config is not an object")
        steps[reg] = {"config": config, "state_file": step.get("state_file")}
    return file, steps


def _load_normalizer(
    path: Path, file: Path, step: dict[str, Any] | None, reg: str, stats: dict[str, Any] | None
) -> Normalizer:
    if step is None:
        raise ProcessorError(f"{file}: has no {reg} step")
    cfg = step["config"]
    where = f"{file}: {reg}"
    # LeRobot's normalizer steps have no default for these: without them nothing would be normalized, and
    # raw values would reach the model (or normalized actions the robot) silently.
    missing = [k for k in ("features", "norm_map") if k not in cfg]
    if missing:
        raise ProcessorError(f"{where}: config lacks {missing} (LeRobot writes both; they have no default)")
    if reg == "unnormalizer_processor" and ACTION not in (cfg["features"] or {}):
        raise ProcessorError(
            f"{where}.features: got {sorted(cfg['features'] or {})}, expected {ACTION!r} among them "
            "(without it the robot would receive normalized actions)"
        )
    try:
        features = {
            k: PolicyFeature.from_dict(v, f"{where}.features.{k}") for k, v in cfg.get("features", {}).items()
        }
    except (ConfigError, AttributeError, TypeError) as e:
        raise ProcessorError(f"{where}.features: {e}") from e
    if cfg.get("normalize_observation_keys") is not None:
        raise ProcessorError(f"{where}: normalize_observation_keys is not supported by SmolVLA pipelines")
    if stats is None:
        stats = {}
        if step["state_file"] is not None:
            state = path / step["state_file"]
            if not state.is_file():
                raise MissingFileError(f"{where}: state_file {state} not found (the normalization stats)")
            try:
                stats = unflatten_stats(load_file(str(state)))
            except Exception as e:
                raise ProcessorError(f"{state}: not a readable safetensors file of stats ({e})") from e
    try:
        return Normalizer(features, cfg.get("norm_map", {}), stats, eps=cfg.get("eps", 1e-8))
    except ValueError as e:
        raise type(e)(f"{where}: {e}") from e


def _device_config(steps: dict[str, dict[str, Any]], default: str) -> tuple[str, str | None]:
    cfg = steps.get("device_processor", {"config": {}})["config"]
    device = cfg.get("device") or default
    float_dtype = cfg.get("float_dtype")
    _float_dtype(float_dtype)
    return device, float_dtype


# --------------------------------------------------------------------------------------------------
# The pipelines


class PolicyPreprocessor:
    """Raw observation (+ action when training) -> the batch the policy consumes."""

    def __init__(
        self,
        *,
        normalizer: Normalizer,
        tokenizer: LanguageTokenizer | None = None,
        tokenizer_name: str | None = None,
        max_length: int = 48,
        padding: str = "longest",
        padding_side: str = "right",
        truncation: bool = True,
        task_key: str = "task",
        rename_map: dict[str, str] | None = None,
        device: str = "cpu",
        float_dtype: str | None = None,
    ) -> None:
        if padding not in ("longest", "max_length"):
            raise ProcessorError(
                f"tokenizer_processor.padding: got {padding!r}, expected 'longest' or 'max_length'"
            )
        if padding_side not in ("left", "right"):
            raise ProcessorError(
                f"tokenizer_processor.padding_side: got {padding_side!r}, expected 'left' or 'right'"
            )
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ProcessorError(
                f"tokenizer_processor.max_length: got {max_length!r}, expected a positive integer"
            )
        _float_dtype(float_dtype)
        if rename_map is not None and (
            not isinstance(rename_map, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in rename_map.items())
        ):
            raise ProcessorError(
                f"rename_observations_processor.rename_map: got {rename_map!r:.80}, expected a mapping of "
                "feature name to feature name"
            )
        if not isinstance(task_key, str) or not task_key:
            raise ProcessorError(f"tokenizer_processor.task_key: got {task_key!r}, expected a feature name")
        self.normalizer = normalizer
        self.tokenizer = tokenizer
        self.tokenizer_name = (
            tokenizer_name if tokenizer_name is not None else getattr(tokenizer, "name", None)
        )
        self.max_length = max_length
        self.padding = padding
        self.padding_side = padding_side
        self.truncation = bool(truncation)
        self.task_key = task_key
        self.rename_map = dict(rename_map or {})
        self.device = str(device)
        self.float_dtype = float_dtype

    def __call__(self, observation: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(observation, dict):
            raise TypeError(
                f"observation: got {type(observation).__name__}, expected a dict of feature name to value"
            )
        batch = to_batch(rename(as_torch(observation), self.rename_map))
        for key, value in batch.items():  # uint8 / channels-last camera frames, as robots give them
            is_frame = key == OBS_IMAGE or (
                key.startswith(OBS_IMAGES + ".") and not key.endswith(("_padding_mask", "_is_pad"))
            )
            if is_frame and isinstance(value, torch.Tensor):
                batch[key] = to_float_chw(value, key)
        if self.tokenizer is not None:
            if batch.get(self.task_key) is None:
                raise ProcessorError(
                    f"observation has no {self.task_key!r} (the language instruction the tokenizer needs); "
                    f"it has keys {sorted(batch)}"
                )
            task = batch[self.task_key]
            tokens, mask = self.tokenizer(
                task,
                self.max_length,
                self.padding,
                truncation=self.truncation,
                padding_side=self.padding_side,
            )
            if isinstance(task, (list, tuple)):  # smolvla_new_line_processor rewrites the task itself too
                batch[self.task_key] = [t if t.endswith("\n") else t + "\n" for t in task]
            batch[OBS_TOKENS] = tokens
            batch[OBS_TOKEN_MASK] = mask
        batch = to_device(batch, self.device, self.float_dtype)
        return self.normalizer.normalize(batch)

    def steps(self) -> list[dict[str, Any]]:
        """The `steps` of `policy_preprocessor.json` (without state files)."""
        tok = {
            "max_length": self.max_length,
            "task_key": self.task_key,
            "padding_side": self.padding_side,
            "padding": self.padding,
            "truncation": self.truncation,
        }
        if self.tokenizer_name is not None:
            tok["tokenizer_name"] = self.tokenizer_name
        return [
            {"registry_name": "rename_observations_processor", "config": {"rename_map": self.rename_map}},
            {"registry_name": "to_batch_processor", "config": {}},
            {"registry_name": "smolvla_new_line_processor", "config": {}},
            {"registry_name": "tokenizer_processor", "config": tok},
            {
                "registry_name": "device_processor",
                "config": {"device": self.device, "float_dtype": self.float_dtype},
            },
            {"registry_name": "normalizer_processor", "config": _normalizer_config(self.normalizer)},
        ]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        steps = self.steps()
        name = self.tokenizer_name
        if name is not None and name not in BUILTIN_TOKENIZERS and not is_portable_name(name):
            # A tokenizer from a local folder travels with the checkpoint (as the policy's backbone does).
            folder = self.tokenizer.folder if self.tokenizer is not None else None
            steps[3]["config"]["tokenizer_name"] = bundle_backbone_files(folder, path)
        _save_stats(path, PREPROCESSOR_STATE_FILE, self.normalizer, steps[5])
        _write(path / PREPROCESSOR_FILE, PREPROCESSOR_NAME, steps)
        return path / PREPROCESSOR_FILE

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        tokenizer: LanguageTokenizer | None = None,
        stats: dict[str, Any] | None = None,
        device: str | None = None,
        rename_map: dict[str, str] | None = None,
    ) -> PolicyPreprocessor:
        """Reads `policy_preprocessor.json` from a folder or Hub repo. `stats`, `device`, `rename_map`
        replace the saved ones (fine-tuning on a new dataset, another device)."""
        path = resolve_dir(path, allow_patterns=PROCESSOR_FILES, what="processor files")
        file, steps = _read(path, PREPROCESSOR_FILE, PRE_STEPS)
        normalizer = _load_normalizer(
            path, file, steps.get("normalizer_processor"), "normalizer_processor", stats
        )
        saved_device, float_dtype = _device_config(steps, "cpu")
        if rename_map is None:
            rename_map = steps.get("rename_observations_processor", {"config": {}})["config"].get(
                "rename_map", {}
            )
        tok_step = steps.get("tokenizer_processor")
        kwargs: dict[str, Any] = {}
        if tok_step is not None:
            cfg = tok_step["config"]
            name = cfg.get("tokenizer_name")
            if tokenizer is None:
                if name is None:
                    raise ProcessorError(
                        f"{file}: tokenizer_processor has no tokenizer_name (it was saved from a tokenizer "
                        "object); pass tokenizer= to load it"
                    )
                # an adapter's folder holds no tokenizer files (LeRobot's): its base's do
                home = adapter_base(path) if not (path / name).exists() else None
                tokenizer = load_tokenizer(name, relative_to=home or path)
            kwargs = {
                "tokenizer_name": name,
                "max_length": cfg.get("max_length", 512),
                "padding": cfg.get("padding", "max_length"),  # LeRobot's step defaults, for absent keys
                "padding_side": cfg.get("padding_side", "right"),
                "truncation": cfg.get("truncation", True),
                "task_key": cfg.get("task_key", "task"),
            }
        else:
            tokenizer = None
        try:
            return cls(
                normalizer=normalizer,
                tokenizer=tokenizer,
                rename_map=rename_map,
                device=device or saved_device,
                float_dtype=float_dtype,
                **kwargs,
            )
        except ProcessorError as e:
            raise ProcessorError(f"{file}: {e}") from e


class PolicyPostprocessor:
    """Policy output actions (normalized) -> robot actions on the CPU."""

    def __init__(
        self, *, normalizer: Normalizer, device: str = "cpu", float_dtype: str | None = None
    ) -> None:
        _float_dtype(float_dtype)
        self.normalizer = normalizer
        self.device = str(device)
        self.float_dtype = float_dtype

    def __call__(self, action: torch.Tensor) -> torch.Tensor:
        action = self.normalizer.unnormalize({ACTION: torch.as_tensor(action)})[ACTION]
        return to_device({ACTION: action}, self.device, self.float_dtype)[ACTION]

    def steps(self) -> list[dict[str, Any]]:
        return [
            {"registry_name": "unnormalizer_processor", "config": _normalizer_config(self.normalizer)},
            {
                "registry_name": "device_processor",
                "config": {"device": self.device, "float_dtype": self.float_dtype},
            },
        ]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        steps = self.steps()
        _save_stats(path, POSTPROCESSOR_STATE_FILE, self.normalizer, steps[0])
        _write(path / POSTPROCESSOR_FILE, POSTPROCESSOR_NAME, steps)
        return path / POSTPROCESSOR_FILE

    @classmethod
    def load(cls, path: str | Path, *, stats: dict[str, Any] | None = None) -> PolicyPostprocessor:
        path = resolve_dir(path, allow_patterns=PROCESSOR_FILES, what="processor files")
        file, steps = _read(path, POSTPROCESSOR_FILE, POST_STEPS)
        normalizer = _load_normalizer(
            path, file, steps.get("unnormalizer_processor"), "unnormalizer_processor", stats
        )
        device, float_dtype = _device_config(steps, "cpu")
        return cls(normalizer=normalizer, device=device, float_dtype=float_dtype)


def make_pre_post_processors(
    config: SmolVLAConfig,
    *,
    pretrained_path: str | Path | None = None,
    dataset_stats: dict[str, Any] | None = None,
    tokenizer: LanguageTokenizer | None = None,
    rename_map: dict[str, str] | None = None,
    device: str = "cpu",
) -> tuple[PolicyPreprocessor, PolicyPostprocessor]:
    """The pipelines of a checkpoint (`pretrained_path`), or new ones from `config` and `dataset_stats`.

    `dataset_stats` (under the dataset's names; `rename_map` maps them to the policy's) replace a
    checkpoint's saved stats, as LeRobot does when fine-tuning.
    """
    stats = None
    if dataset_stats is not None:
        stats = rename_stats(to_stats(dataset_stats), rename_map or {})
    if pretrained_path is not None:
        path = resolve_dir(pretrained_path, allow_patterns=PROCESSOR_FILES, what="processor files")
        pre = PolicyPreprocessor.load(
            path, tokenizer=tokenizer, stats=stats, device=device, rename_map=rename_map
        )
        post = PolicyPostprocessor.load(path, stats=stats)
        return pre, post

    features = {**config.input_features, **config.output_features}
    norm_map = config.normalization_mapping
    if tokenizer is None:
        tokenizer = load_tokenizer(config.vlm_model_name)
    pre = PolicyPreprocessor(
        normalizer=Normalizer(features, norm_map, stats),
        tokenizer=tokenizer,
        tokenizer_name=config.vlm_model_name,  # what LeRobot saves, whatever tokenizer object is used
        max_length=config.tokenizer_max_length,
        padding=config.pad_language_to,
        rename_map=rename_map,
        device=device,
    )
    post = PolicyPostprocessor(normalizer=Normalizer(config.output_features, norm_map, stats))
    return pre, post


def sample_observation(cfg: SmolVLAConfig, seed: int = 0) -> dict[str, Any]:
    """A camera frame per camera (uint8, channels last, as a robot gives it), a state, a task."""
    rng = np.random.default_rng(seed)
    obs: dict[str, Any] = {}
    for key, feat in cfg.image_features.items():
        _, h, w = feat.shape
        frame = np.zeros((h, w, 3), np.uint8)
        frame[..., 2] = np.linspace(60, 200, w, dtype=np.uint8)[None]  # a blue-ish table
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        frame[y : y + h // 4, x : x + w // 4] = (220, 30, 30)  # a red cube
        obs[key] = frame
    if cfg.state_feature is not None:
        obs[OBS_STATE] = rng.normal(size=cfg.state_feature.shape).astype(np.float32)
    obs[TASK] = "pick up the red cube"
    return obs
