"""The training config and LeRobot-style flags (`--policy.path=... --dataset.repo_id=... --steps=20000`).

`TrainConfig` is a frozen dataclass; `parse_args(argv)` builds one from flags and an optional
`--config_path=train.json` (the `train_config.json` every checkpoint holds), flags winning. Any policy
config field is a flag: `--policy.n_action_steps=10`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smolvla.config import PRESETS, SmolVLAConfig
from smolvla.errors import SmolVLAError
from smolvla.io import read_json_object

if TYPE_CHECKING:
    from smolvla.data.augment import AugmentConfig


class FlagError(SmolVLAError, ValueError):
    """A command-line flag or config-file entry is unknown or malformed."""


@dataclass(frozen=True)
class DatasetConfig:
    repo_id: str = ""  # a local folder or a hub repo id
    episodes: tuple[int, ...] | None = None  # None: all
    augment: bool = False  # image augmentation (smolvla.data.augment)
    augment_max_shift: int | None = None  # pixels; None: AugmentConfig's default
    augment_crop_scale: float | None = None  # side fraction kept by random crops; 1 disables them
    check: str = "quick"  # check_dataset before step 1: quick (files, headers, rows) | full (decode)

    def augment_config(self) -> AugmentConfig:
        """The augmentation this dataset config asks for (validated by AugmentConfig)."""
        from smolvla.data.augment import AugmentConfig

        changes = {"max_shift": self.augment_max_shift, "crop_scale": self.augment_crop_scale}
        base = AugmentConfig(enabled=self.augment)
        return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class EnvConfig:
    type: str | None = None  # "metaworld" enables evaluation during training
    task: str | None = None  # comma-separated tasks or a difficulty (easy|medium|hard|very_hard|all)


@dataclass(frozen=True)
class EvalConfig:
    n_episodes: int = 10  # per task
    workers: int = 2
    max_episode_steps: int | None = None


@dataclass(frozen=True)
class TrainConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    policy_path: str | None = None  # fine-tune from a checkpoint (folder or repo id)
    policy_preset: str | None = None  # or train a new policy from a preset
    policy_overrides: dict[str, Any] = field(default_factory=dict)  # --policy.<field>=value
    rename_map: dict[str, str] = field(default_factory=dict)  # dataset key -> policy key
    env: EnvConfig = field(default_factory=EnvConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str | None = None
    batch_size: int = 8
    steps: int = 100_000
    grad_accum_steps: int = 1
    save_freq: int = 20_000
    log_freq: int = 200
    eval_freq: int = 20_000
    seed: int = 1000
    num_workers: int = 2
    device: str | None = None  # None: cuda if available, else cpu
    precision: str = "auto"  # auto | fp32 | bf16 (autocast where the device supports it)
    resume: bool = False
    wandb: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, expected: str) -> FlagError:
            return FlagError(f"--{name}: got {value!r}, expected {expected}")

        if not self.dataset.repo_id:
            raise FlagError("--dataset.repo_id is required: a dataset folder or hub repo id")
        if (self.policy_path is None) == (self.policy_preset is None):
            raise FlagError(
                "give exactly one of --policy.path (fine-tune a checkpoint) or --policy.type=smolvla "
                f"--policy.preset=NAME (a new policy; presets: {sorted(PRESETS)})"
            )
        if self.policy_preset is not None and self.policy_preset not in PRESETS:
            raise bad("policy.preset", self.policy_preset, f"one of {sorted(PRESETS)}")
        for name in ("batch_size", "steps", "grad_accum_steps", "save_freq", "log_freq"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad(name, v, "a positive integer")
        if not isinstance(self.eval_freq, int) or self.eval_freq < 0:
            raise bad("eval_freq", self.eval_freq, "a non-negative integer (0: no evaluation)")
        if self.num_workers < 0:
            raise bad("num_workers", self.num_workers, "a non-negative integer")
        try:
            self.dataset.augment_config()
        except ValueError as e:  # "AugmentConfig.<field>: ..." -> the flag the user typed
            name, _, rest = str(e).removeprefix("AugmentConfig.").partition(":")
            raise FlagError(f"--dataset.augment_{name}:{rest}") from None
        if self.precision not in ("auto", "fp32", "bf16"):
            raise bad("precision", self.precision, "'auto', 'fp32' or 'bf16'")
        if self.env.type not in (None, "metaworld"):
            raise bad("env.type", self.env.type, "'metaworld' (the simulator this project evaluates in)")
        if self.env.type and not self.env.task:
            raise FlagError("--env.task is required with --env.type: tasks or a difficulty (e.g. easy)")
        if self.dataset.episodes is not None and not all(
            isinstance(e, int) and e >= 0 for e in self.dataset.episodes
        ):
            raise bad("dataset.episodes", self.dataset.episodes, "a list of episode indices")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        nested = {"dataset": DatasetConfig, "env": EnvConfig, "eval": EvalConfig}
        for key, sub in nested.items():
            if key in d:
                d[key] = sub(**_known(d[key], sub, key))
        if d.get("dataset") and isinstance(d["dataset"].episodes, list):
            d["dataset"] = dataclasses.replace(d["dataset"], episodes=tuple(d["dataset"].episodes))
        return cls(**_known(d, cls, ""))

    def policy_config(self, base: SmolVLAConfig) -> SmolVLAConfig:
        """`base` with this run's `--policy.<field>` overrides applied."""
        return base.override(**self.policy_overrides) if self.policy_overrides else base


def _known(d: dict[str, Any], cls: type, prefix: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    for k in d:
        if k not in names:
            close = difflib.get_close_matches(k, names, 1)
            where = f"{prefix}." if prefix else ""
            hint = f" (did you mean {where}{close[0]}?)" if close else ""
            raise FlagError(f"unknown setting {where}{k}{hint}")
    return d


# --------------------------------------------------------------------------------------------------
# Flags

# flag -> (path in TrainConfig's dict, type)
_FLAGS: dict[str, tuple[tuple[str, ...], type]] = {
    "config_path": ((), str),
    "policy.path": (("policy_path",), str),
    "policy.type": ((), str),
    "policy.preset": (("policy_preset",), str),
    "policy.device": (("device",), str),
    "dataset.repo_id": (("dataset", "repo_id"), str),
    "dataset.episodes": (("dataset", "episodes"), list),
    "dataset.augment": (("dataset", "augment"), bool),
    "dataset.image_transforms.enable": (("dataset", "augment"), bool),  # LeRobot's name for it
    "dataset.augment_max_shift": (("dataset", "augment_max_shift"), int),
    "dataset.augment_crop_scale": (("dataset", "augment_crop_scale"), float),
    "rename_map": (("rename_map",), dict),
    "env.type": (("env", "type"), str),
    "env.task": (("env", "task"), str),
    "eval.n_episodes": (("eval", "n_episodes"), int),
    "eval.workers": (("eval", "workers"), int),
    "eval.max_episode_steps": (("eval", "max_episode_steps"), int),
    "output_dir": (("output_dir",), str),
    "batch_size": (("batch_size",), int),
    "steps": (("steps",), int),
    "gradient_accumulation_steps": (("grad_accum_steps",), int),
    "save_freq": (("save_freq",), int),
    "log_freq": (("log_freq",), int),
    "eval_freq": (("eval_freq",), int),
    "seed": (("seed",), int),
    "num_workers": (("num_workers",), int),
    "precision": (("precision",), str),
    "resume": (("resume",), bool),
    "wandb.enable": (("wandb",), bool),
}


def _parse_value(flag: str, raw: str, kind: type) -> Any:
    if kind is str:
        return raw
    if kind is bool:
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise FlagError(f"--{flag}: got {raw!r}, expected true or false")
    try:
        v = json.loads(raw)
    except json.JSONDecodeError:
        raise FlagError(f"--{flag}: could not parse {raw!r} as {kind.__name__} (JSON)") from None
    if kind is int and (not isinstance(v, int) or isinstance(v, bool)):
        raise FlagError(f"--{flag}: got {raw!r}, expected an integer")
    if kind is float:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise FlagError(f"--{flag}: got {raw!r}, expected a number")
        v = float(v)
    if kind in (list, dict) and not isinstance(v, kind):
        raise FlagError(f"--{flag}: got {raw!r}, expected a JSON {kind.__name__}")
    return v


def split_flags(argv: list[str]) -> list[tuple[str, str]]:
    """`--a.b=v` and `--a.b v` as (name, raw value); a bare `--flag` means true."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise FlagError(f"unexpected argument {arg!r}: flags look like --name=value")
        name, eq, raw = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                raw, i = argv[i + 1], i + 1
            else:
                raw = "true"
        out.append((name, raw))
        i += 1
    return out


def parse_args(argv: list[str]) -> TrainConfig:
    """A TrainConfig from LeRobot-style flags. Unknown flags are errors naming the closest valid one."""
    flags = split_flags(argv)
    d: dict[str, Any] = {}
    for name, raw in flags:
        if name == "config_path":
            d = read_json_object(raw, FlagError)
    d.setdefault("policy_overrides", {})
    policy_fields = {f.name for f in dataclasses.fields(SmolVLAConfig)}
    for name, raw in flags:
        if name == "config_path":
            continue
        if name == "policy.type":
            if raw != "smolvla":
                raise FlagError(f"--policy.type: got {raw!r}, expected 'smolvla'")
            d.setdefault("policy_preset", d.get("policy_preset") or "base")
            continue
        if name in _FLAGS:
            path, kind = _FLAGS[name]
            target = d
            for p in path[:-1]:
                target = target.setdefault(p, {})
            target[path[-1]] = _parse_value(name, raw, kind)
        elif name.startswith("policy.") and name[7:] in policy_fields:
            d["policy_overrides"][name[7:]] = raw  # parsed by SmolVLAConfig.override
        else:
            valid = [*_FLAGS, *(f"policy.{f}" for f in policy_fields)]
            close = difflib.get_close_matches(name, valid, 1)
            raise FlagError(f"unknown flag --{name}" + (f" (did you mean --{close[0]}?)" if close else ""))
    if isinstance(d.get("dataset", {}).get("episodes"), list):
        d["dataset"]["episodes"] = tuple(d["dataset"]["episodes"])
    return TrainConfig.from_dict(d)


def flag_names() -> list[str]:
    return sorted(_FLAGS)


def default_output_dir(cfg: TrainConfig) -> Path:
    import time

    name = Path(cfg.dataset.repo_id.rstrip("/")).name or "dataset"
    return Path("outputs/train") / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_smolvla_{name}"
