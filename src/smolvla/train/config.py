"""The training config: a frozen dataclass whose fields are `smolvla train`'s flags.

The command line (smolvla.apps.cli) builds it with draccus from flags and an optional
`--config_path=train_config.json` (the file every checkpoint holds), flags winning; the comments beside
the fields are the flags' help. Any policy config field is a flag too: `--policy.n_action_steps=10`
lands in `policy.overrides`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smolvla.config import PRESETS, SmolVLAConfig
from smolvla.errors import SmolVLAError

if TYPE_CHECKING:
    from smolvla.data.augment import AugmentConfig
    from smolvla.model.lora import LoraSpec


class FlagError(SmolVLAError, ValueError):
    """A training setting is missing, unknown or malformed (named as its flag)."""


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
class TrainPolicyConfig:
    path: str | None = None  # fine-tune this checkpoint (a folder or a hub repo id)
    type: str | None = None  # smolvla: a new policy (from --policy.preset, default base)
    preset: str | None = None  # train a new policy from this preset: base | tiny | micro
    device: str | None = None  # None: cuda if available, else cpu
    # recompute activations in the backward pass instead of keeping them: less memory, ~1 more forward
    gradient_checkpointing: bool = False
    # SmolVLA config fields to change, as --policy.<field>=value (e.g. --policy.n_action_steps=10)
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainEnvConfig:
    type: str | None = None  # metaworld: evaluate checkpoints in simulation every --eval_freq steps
    task: str | None = None  # comma-separated tasks or a difficulty (easy|medium|hard|very_hard|all)
    max_episode_steps: int | None = None  # None: the evaluation's default (400)


@dataclass(frozen=True)
class TrainEvalConfig:
    """How training evaluates its checkpoints (smolvla.eval.EvalConfig is the evaluation itself)."""

    n_episodes: int = 10  # episodes per task
    workers: int = 2  # simulator processes


@dataclass(frozen=True)
class PeftConfig:
    """LeRobot's `--peft.*` flags (configs/default.py::PeftConfig); any of them turns LoRA on."""

    method_type: str = "LORA"  # the adapter kind: LORA (the one implemented)
    # a regular expression over module names, or a list of name suffixes; None: LeRobot's SmolVLA
    # default, the expert's q/v projections and the state/action/time projections
    target_modules: list[str] | str | None = None
    full_training_modules: list[str] | None = None  # modules trained in full beside the adapters
    init_type: str | None = None  # None (PEFT's default: B zero) | gaussian | false
    r: int = 16  # the adapters' rank
    lora_alpha: int | None = None  # the adapters' scale is alpha over r (None: PEFT's default alpha, 8)

    def spec(self) -> LoraSpec:
        """The adapter these flags describe (validated there, re-raised under the flag's name)."""
        from smolvla.config import ConfigError
        from smolvla.model.lora import DEFAULT_TARGETS, PEFT_DEFAULT_ALPHA, LoraSpec

        if str(self.method_type).upper() != "LORA":
            raise FlagError(
                f"--peft.method_type: got {self.method_type!r}, expected 'LORA' (the one implemented)"
            )
        init: bool | str = True
        if self.init_type is not None:
            init = {"true": True, "false": False}.get(str(self.init_type).lower(), self.init_type)
        names = {
            "modules_to_save": "full_training_modules",
            "init_lora_weights": "init_type",
        }  # PEFT's -> ours
        try:
            return LoraSpec(
                r=self.r,
                lora_alpha=PEFT_DEFAULT_ALPHA if self.lora_alpha is None else self.lora_alpha,
                target_modules=DEFAULT_TARGETS if self.target_modules is None else self.target_modules,
                modules_to_save=tuple(self.full_training_modules or ()),
                init_lora_weights=init,
            )
        except ConfigError as e:  # "LoRA <field>: ..." -> the flag
            field_, _, rest = str(e).removeprefix("LoRA ").partition(":")
            raise FlagError(f"--peft.{names.get(field_, field_)}:{rest}") from None


@dataclass(frozen=True)
class EMAConfig:
    """An exponential moving average of the trained weights (LeRobot main's `--ema.*`). The decay at
    optimizer step t is 1 - (1 + t / inv_gamma) ** -power, clamped to [min_decay, max_decay], or the
    constant --ema.decay; the first update (and those up to --ema.update_after_step) copies."""

    enable: bool = False  # keep the average; checkpoints hold it in pretrained_model_ema/
    decay: float | None = None  # a constant decay (e.g. 0.999) instead of the warm-up schedule
    update_after_step: int = 0  # optimizer steps during which the average copies the weights
    inv_gamma: float = 1.0  # warm-up schedule: 1 - (1 + t / inv_gamma) ** -power
    power: float = 0.75  # warm-up schedule's exponent
    min_decay: float = 0.0  # the schedule's decay is clamped to [min_decay, max_decay]
    max_decay: float = 0.9999  # the longest memory: about 10,000 steps
    use_for_eval: bool = True  # evaluate the average (--env.type) instead of the trained weights

    def __post_init__(self) -> None:
        if not 0 <= self.min_decay <= self.max_decay <= 1:
            raise FlagError(
                f"--ema.min_decay / --ema.max_decay: got {self.min_decay} / {self.max_decay}, expected "
                "0 <= min_decay <= max_decay <= 1"
            )
        if self.decay is not None and not 0 <= self.decay <= 1:
            raise FlagError(f"--ema.decay: got {self.decay!r}, expected a number in [0, 1]")
        if self.decay is not None and (self.min_decay, self.max_decay) != (0.0, 0.9999):
            raise FlagError(
                "--ema.decay (constant) and --ema.min_decay / --ema.max_decay (schedule) exclude each other"
            )
        if not self.inv_gamma > 0:
            raise FlagError(f"--ema.inv_gamma: got {self.inv_gamma!r}, expected a positive number")
        if not self.power > 0:
            raise FlagError(f"--ema.power: got {self.power!r}, expected a positive number")
        if not isinstance(self.update_after_step, int) or self.update_after_step < 0:
            raise FlagError(
                f"--ema.update_after_step: got {self.update_after_step!r}, expected a non-negative integer"
            )

    def decay_at(self, step: int) -> float:
        """The decay of the update made after optimizer step `step` (1-based), as diffusers' EMAModel
        computes it for LeRobot: 0 (a copy) up to update_after_step + 1."""
        t = max(0, step - self.update_after_step - 1)
        if t <= 0:
            return 0.0
        lo, hi = (self.decay, self.decay) if self.decay is not None else (self.min_decay, self.max_decay)
        return max(min(1 - (1 + t / self.inv_gamma) ** -self.power, hi), lo)


@dataclass(frozen=True)
class WandBConfig:
    enable: bool = False  # log to Weights & Biases (if installed)


@dataclass(frozen=True)
class TrainConfig:
    """Train or fine-tune a SmolVLA policy on a LeRobot dataset."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    policy: TrainPolicyConfig = field(default_factory=TrainPolicyConfig)
    rename_map: dict[str, str] = field(default_factory=dict)  # dataset key -> policy key
    env: TrainEnvConfig = field(default_factory=TrainEnvConfig)
    eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)
    output_dir: str | None = None  # None: outputs/train/<date>_<time>_smolvla_<dataset>
    batch_size: int = 8  # per process
    steps: int = 100_000  # optimizer steps in all
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    save_freq: int = 20_000  # checkpoint every this many steps (and at the end)
    log_freq: int = 200  # log the loss every this many steps
    eval_freq: int = 20_000  # evaluate every this many steps with --env.type (0: never)
    seed: int = 1000  # weight init, data order, noise and augmentation draws
    num_workers: int = 2  # DataLoader worker processes
    precision: str = "auto"  # auto | fp32 | bf16 (autocast where the device supports it)
    resume: bool = False  # continue the run in --output_dir from its last checkpoint
    peft: PeftConfig | None = None  # LoRA adapters (any --peft.* flag): see docs/training.md
    ema: EMAConfig = field(default_factory=EMAConfig)
    wandb: WandBConfig = field(default_factory=WandBConfig)

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, expected: str) -> FlagError:
            return FlagError(f"--{name}: got {value!r}, expected {expected}")

        if self.policy.type not in (None, "smolvla"):
            raise bad("policy.type", self.policy.type, "'smolvla'")
        if self.policy.type and self.policy.path is None and self.policy.preset is None:
            object.__setattr__(self, "policy", dataclasses.replace(self.policy, preset="base"))
        if not self.dataset.repo_id:
            raise FlagError("--dataset.repo_id is required: a dataset folder or hub repo id")
        if (self.policy.path is None) == (self.policy.preset is None):
            raise FlagError(
                "give exactly one of --policy.path (fine-tune a checkpoint) or --policy.type=smolvla "
                f"--policy.preset=NAME (a new policy; presets: {sorted(PRESETS)})"
            )
        if self.policy.preset is not None and self.policy.preset not in PRESETS:
            raise bad("policy.preset", self.policy.preset, f"one of {sorted(PRESETS)}")
        for name in ("batch_size", "steps", "gradient_accumulation_steps", "save_freq", "log_freq"):
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
        if self.peft is not None:
            if self.policy.path is None:
                raise FlagError(
                    "--peft.*: LoRA adapts a trained checkpoint; give --policy.path (e.g. "
                    "lerobot/smolvla_base), not a new policy from a preset"
                )
            self.peft.spec()
        if self.dataset.episodes is not None and not all(
            isinstance(e, int) and e >= 0 for e in self.dataset.episodes
        ):
            raise bad("dataset.episodes", self.dataset.episodes, "a list of episode indices")

    def to_dict(self) -> dict[str, Any]:
        import draccus

        return draccus.encode(self)

    @staticmethod
    def upgrade_dict(d: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """A train_config.json written before the command line came from draccus (flat `policy_path`,
        `grad_accum_steps`, `wandb: true`, ...) in today's shape, and the keys that moved, so that runs
        started before keep resuming. A file of today's shape comes back unchanged, with no keys."""
        out = json.loads(json.dumps(d))  # a deep copy of plain JSON
        moved = []
        policy = out.get("policy") if isinstance(out.get("policy"), dict) else {}
        flat = {
            "policy_path": "path",
            "policy_preset": "preset",
            "policy_overrides": "overrides",
            "device": "device",
        }
        for old, new in flat.items():
            if old in out:
                policy[new] = out.pop(old)
                moved.append(f"{old} -> policy.{new}")
        if moved:
            out["policy"] = policy
        if "grad_accum_steps" in out:
            out["gradient_accumulation_steps"] = out.pop("grad_accum_steps")
            moved.append("grad_accum_steps -> gradient_accumulation_steps")
        if isinstance(out.get("wandb"), bool):
            out["wandb"] = {"enable": out["wandb"]}
            moved.append("wandb -> wandb.enable")
        ev = out.get("eval")
        if isinstance(ev, dict) and "max_episode_steps" in ev:
            env = out.setdefault("env", {})
            if isinstance(env, dict):
                env["max_episode_steps"] = ev.pop("max_episode_steps")
                moved.append("eval.max_episode_steps -> env.max_episode_steps")
        return out, moved

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config `to_dict` wrote (a checkpoint's train_config.json, also of the older shape);
        unknown keys are errors."""
        import draccus

        try:
            return draccus.decode(cls, cls.upgrade_dict(d)[0])
        except draccus.utils.DecodingError as e:
            if isinstance(e.__cause__, SmolVLAError):
                raise e.__cause__ from None
            raise FlagError(str(e)) from None

    def policy_config(self, base: SmolVLAConfig) -> SmolVLAConfig:
        """`base` with this run's `--policy.<field>` overrides applied."""
        return base.override(**self.policy.overrides) if self.policy.overrides else base


# What a resumed run must keep: changing them would make a different run, not a continuation.
FIXED_ON_RESUME = (
    "dataset",
    "policy",
    "rename_map",
    "batch_size",
    "gradient_accumulation_steps",
    "seed",
    "peft",
    "ema",
)


def resume_changes(saved: TrainConfig, cfg: TrainConfig) -> list[str]:
    """The settings of `cfg` that differ from the run it resumes and may not (see FIXED_ON_RESUME)."""
    changed = []
    free = {"policy.gradient_checkpointing"}  # changes memory and speed, not the run
    for name in FIXED_ON_RESUME:
        old, new = getattr(saved, name), getattr(cfg, name)
        if old == new:
            continue
        if dataclasses.is_dataclass(old):
            changed += [
                f"{name}.{f.name}"
                for f in dataclasses.fields(old)
                if getattr(old, f.name) != getattr(new, f.name) and f"{name}.{f.name}" not in free
            ]
        else:
            changed.append(name)
    return changed


def default_output_dir(cfg: TrainConfig) -> Path:
    import time

    name = Path(cfg.dataset.repo_id.rstrip("/")).name or "dataset"
    return Path("outputs/train") / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_smolvla_{name}"
