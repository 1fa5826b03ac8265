"""LoRA adapters on the policy's linear layers, in PEFT's file format.

LeRobot 0.6.1 fine-tunes SmolVLA with PEFT's LoRA and stores the result as PEFT does:

    adapter_config.json          PEFT's LoraConfig, with base_model_name_or_path (the base checkpoint)
    adapter_model.safetensors    base_model.model.<module>.lora_A.weight   (r, in)
                                 base_model.model.<module>.lora_B.weight   (out, r)
                                 base_model.model.<module>.<param>         modules trained in full

Module names are the policy's (`model.vlm_with_expert.lm_expert.layers.0.self_attn.q_proj`), which are
LeRobot's, so an adapter made here loads under PEFT on LeRobot's policy and the other way round. PEFT is
not needed: a wrapped layer computes what PEFT's does, y = W x + b + (alpha / r) B A x, and the files
are read and written with the same names, shapes and config keys. Matching follows PEFT's rules:
a string `target_modules` is a regular expression matched against the whole module name, a list names
module-name suffixes, `modules_to_save` entries are suffixes too.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import nn

from smolvla.checkpoint import CheckpointError, check_keys, check_tensor, read_safetensors
from smolvla.config import ConfigError
from smolvla.hub import ADAPTER_CONFIG
from smolvla.io import read_json_object, write_atomic, write_json

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the policy

# LeRobot's SmolVLA defaults (`SmolVLAPolicy._get_default_peft_targets`): the expert's query and value
# projections and the five projections between actions, state, time and the two streams; no VLM layer.
DEFAULT_TARGETS = (
    r"(model\.vlm_with_expert\.lm_expert\..*\.(q|v)_proj|model\.(state_proj|action_in_proj|"
    r"action_out_proj|action_time_mlp_in|action_time_mlp_out))"
)
PEFT_DEFAULT_ALPHA = 8  # LoraConfig.lora_alpha's default, which LeRobot keeps when --peft.lora_alpha is unset
INIT_TYPES = (True, False, "gaussian")  # PEFT's init_lora_weights values that need no data or SVD


@dataclass(frozen=True)
class LoraSpec:
    """What a LoRA adapter is: PEFT's LoraConfig fields that change the network."""

    r: int = 16
    lora_alpha: float = PEFT_DEFAULT_ALPHA
    target_modules: str | tuple[str, ...] = DEFAULT_TARGETS
    modules_to_save: tuple[str, ...] = ()
    init_lora_weights: bool | str = True
    lora_dropout: float = 0.0
    use_rslora: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, expected: str) -> ConfigError:
            return ConfigError(f"LoRA {name}: got {value!r}, expected {expected}")

        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            raise bad("r", self.r, "a positive integer (the adapter's rank)")
        if not isinstance(self.lora_alpha, (int, float)) or not self.lora_alpha > 0:
            raise bad("lora_alpha", self.lora_alpha, "a positive number (scaling = lora_alpha / r)")
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not self.target_modules or not (
            isinstance(self.target_modules, str) or all(isinstance(t, str) and t for t in self.target_modules)
        ):
            raise bad("target_modules", self.target_modules, "a regular expression or a list of module names")
        if isinstance(self.target_modules, str):
            try:
                re.compile(self.target_modules)
            except re.error as e:
                raise bad(
                    "target_modules", self.target_modules, f"a valid regular expression ({e})"
                ) from None
        object.__setattr__(self, "modules_to_save", tuple(self.modules_to_save or ()))
        if not all(isinstance(m, str) and m for m in self.modules_to_save):
            raise bad("modules_to_save", self.modules_to_save, "a list of module names")
        if self.init_lora_weights not in INIT_TYPES:
            raise bad(
                "init_lora_weights",
                self.init_lora_weights,
                "true (PEFT's default: A Kaiming-uniform, B zero), 'gaussian' (A normal with std 1/r, "
                "B zero) or false (B random too: the adapter changes the policy from the start); PEFT's "
                "data- or SVD-based inits (eva, pissa, olora, corda, loftq) are not implemented",
            )
        if not isinstance(self.lora_dropout, (int, float)) or not 0 <= self.lora_dropout < 1:
            raise bad("lora_dropout", self.lora_dropout, "a probability in [0, 1)")
        for name, pattern in (("rank_pattern", self.rank_pattern), ("alpha_pattern", self.alpha_pattern)):
            if not isinstance(pattern, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in pattern.values()
            ):
                raise bad(name, pattern, "a mapping of module-name patterns to positive numbers")

    # -- per module --------------------------------------------------------------------------------

    def rank(self, name: str) -> int:
        return int(_pattern_value(self.rank_pattern, name, self.r))

    def scaling(self, name: str) -> float:
        r, alpha = self.rank(name), _pattern_value(self.alpha_pattern, name, self.lora_alpha)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def saves(self, name: str) -> bool:
        """PEFT's `modules_to_save` rule: the module name ends with an entry."""
        return any(name.endswith(m) for m in self.modules_to_save)

    def targets(self, name: str) -> bool:
        """PEFT's target rule, after excluding modules trained in full."""
        if any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in self.modules_to_save):
            return False
        if isinstance(self.target_modules, str):
            if self.target_modules == "all-linear":
                return True  # every linear layer but the output head (filtered by the caller)
            return re.fullmatch(self.target_modules, name) is not None
        return name in self.target_modules or any(name.endswith(f".{t}") for t in self.target_modules)

    # -- PEFT's adapter_config.json -----------------------------------------------------------------

    def to_peft(self, base_model_name_or_path: str | None, revision: str | None = None) -> dict[str, Any]:
        target = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return {
            "peft_type": "LORA",
            "task_type": None,
            "auto_mapping": {
                "base_model_class": "SmolVLAPolicy",
                "parent_library": "lerobot.policies.smolvla.modeling_smolvla",
            },
            "base_model_name_or_path": base_model_name_or_path,
            "revision": revision,
            "inference_mode": True,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": target,
            "exclude_modules": None,
            "modules_to_save": list(self.modules_to_save) or None,
            "init_lora_weights": self.init_lora_weights,
            "use_rslora": self.use_rslora,
            "use_dora": False,
            "bias": "none",
            "lora_bias": False,
            "fan_in_fan_out": False,
            "rank_pattern": dict(self.rank_pattern),
            "alpha_pattern": dict(self.alpha_pattern),
            "layers_to_transform": None,
            "layers_pattern": None,
            "layer_replication": None,
            "megatron_config": None,
            "megatron_core": "megatron.core",
            "loftq_config": {},
            "use_qalora": False,
            "target_parameters": None,
            "trainable_token_indices": None,
        }

    @classmethod
    def from_peft(cls, d: dict[str, Any], source: str) -> LoraSpec:
        """A spec from PEFT's adapter_config.json; anything it describes that this module does not
        compute (DoRA, biases, other adapter types) is refused, naming the key."""

        def refuse(key: str, expected: str) -> CheckpointError:
            return CheckpointError(f"{source}: {key} is {d.get(key)!r}; this loader supports {expected}")

        if d.get("peft_type") != "LORA":
            raise refuse("peft_type", "'LORA' only")
        unsupported = {
            "use_dora": (False, None),
            "bias": ("none", None),
            "lora_bias": (False, None),
            "fan_in_fan_out": (False, None),
            "layers_to_transform": (None, []),
            "layer_replication": (None, []),
            "exclude_modules": (None, [], ""),
            "target_parameters": (None, []),
            "trainable_token_indices": (None, [], {}),
            "use_qalora": (False, None),
            "alora_invocation_tokens": (None,),
        }
        for key, allowed in unsupported.items():
            if d.get(key) not in allowed:
                raise refuse(key, " or ".join(repr(a) for a in allowed))
        try:
            return cls(
                r=d.get("r", 8),
                lora_alpha=d.get("lora_alpha", PEFT_DEFAULT_ALPHA),
                target_modules=d.get("target_modules") or (),
                modules_to_save=tuple(d.get("modules_to_save") or ()),
                init_lora_weights=d.get("init_lora_weights", True),
                lora_dropout=d.get("lora_dropout", 0.0) or 0.0,
                use_rslora=bool(d.get("use_rslora", False)),
                rank_pattern=d.get("rank_pattern") or {},
                alpha_pattern=d.get("alpha_pattern") or {},
            )
        except ConfigError as e:
            raise CheckpointError(f"{source}: {e}") from None


def _pattern_value(pattern: dict[str, float], name: str, default: float) -> float:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the end of the name."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


# --------------------------------------------------------------------------------------------------
# The layer


class LoraLinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: y = base(x) + scaling * B(A(dropout(x))).

    Attribute names are PEFT's (`base_layer`, `lora_A`, `lora_B`), so state-dict keys read the same."""

    def __init__(self, base: nn.Linear, r: int, scaling: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base_layer = base
        device = base.weight.device
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=device)  # (r, in)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=device)  # (out, r)
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    # The model reads these of the layers it owns (dtype, the output projection's weight).
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def init(self, how: bool | str) -> None:
        """PEFT's `reset_lora_parameters`: B is zero so the adapter starts as the identity (unless
        `how` is False, PEFT's choice for testing: both random)."""
        if how is False:
            return  # nn.Linear's own init for both
        if how == "gaussian":
            nn.init.normal_(self.lora_A.weight, std=1 / self.lora_A.out_features)
        else:
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)  # (..., out)
        a = self.lora_A.weight
        return y + (self.lora_B(self.lora_A(self.dropout(x).to(a.dtype))) * self.scaling).to(y.dtype)

    def delta(self) -> torch.Tensor:
        """The update this adapter adds to the base weight, in fp32: scaling * B @ A (out, in)."""
        return self.scaling * (self.lora_B.weight.float() @ self.lora_A.weight.float())

    def merged(self) -> nn.Linear:
        """A plain nn.Linear computing the same function (the base weight plus `delta`, in fp32: a bf16
        base cannot hold a small update)."""
        base = self.base_layer
        out = nn.Linear(
            base.in_features, base.out_features, bias=base.bias is not None, device=base.weight.device
        )
        with torch.no_grad():
            out.weight.copy_(base.weight.float() + self.delta())
            if base.bias is not None:
                out.bias.copy_(base.bias.float())
        return out


# --------------------------------------------------------------------------------------------------
# A model with adapters


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


def add_lora(model: nn.Module, spec: LoraSpec, exclude: tuple[str, ...] = ("lm_head",)) -> list[str]:
    """Wraps every linear layer `spec` targets and freezes the rest of `model`, as PEFT's
    get_peft_model does: only the adapters and `modules_to_save` train. Returns the wrapped names.

    `exclude`: names never wrapped by "all-linear" (PEFT leaves the output head alone too)."""
    if lora_layers(model):
        raise ConfigError("LoRA: the model already holds adapters; merge them first (smolvla merge)")
    names = dict(model.named_modules())
    wrapped, rejected = [], []
    for name, module in names.items():
        if not name or not spec.targets(name):
            continue
        if spec.target_modules == "all-linear" and (
            not isinstance(module, nn.Linear) or name.split(".")[-1] in exclude
        ):
            continue
        if not isinstance(module, nn.Linear):
            rejected.append(f"{name} ({type(module).__name__})")
            continue
        wrapped.append(name)
    if rejected:
        raise ConfigError(
            f"LoRA target_modules {spec.target_modules!r} matches modules that are not linear layers: "
            f"{', '.join(rejected[:5])}; LoRA adapts nn.Linear only"
        )
    if not wrapped:
        raise ConfigError(
            f"LoRA target_modules {spec.target_modules!r} matches no linear layer of the policy "
            "(names look like model.vlm_with_expert.lm_expert.layers.0.self_attn.q_proj)"
        )
    saved = [n for n in names if n and spec.saves(n)]
    missing = [m for m in spec.modules_to_save if not any(n.endswith(m) for n in saved)]
    if missing:
        raise ConfigError(f"LoRA modules_to_save: {missing} name no module of the policy")
    model.requires_grad_(False)
    for name in wrapped:
        parent, _, attr = name.rpartition(".")
        base = names[name]
        layer = LoraLinear(base, spec.rank(name), spec.scaling(name), spec.lora_dropout)
        layer.init(spec.init_lora_weights)
        setattr(model.get_submodule(parent) if parent else model, attr, layer)
    for name in _outermost(saved):
        model.get_submodule(name).requires_grad_(True)
    for layer in lora_layers(model).values():
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
    return wrapped


def _outermost(names: list[str]) -> list[str]:
    """Names with no ancestor in the list (PEFT wraps a module to save once, with its children)."""
    return [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]


def merge_lora(model: nn.Module) -> list[str]:
    """Folds every adapter into its base layer and removes it. Returns the merged names."""
    merged = []
    for name, layer in lora_layers(model).items():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, layer.merged())
        merged.append(name)
    return merged


def adapter_state(model: nn.Module, spec: LoraSpec) -> dict[str, torch.Tensor]:
    """The tensors PEFT saves, under PEFT's names."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model).items():
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight
    for name in _outermost([n for n, _ in model.named_modules() if n and spec.saves(n)]):
        for key, t in model.get_submodule(name).state_dict().items():
            out[f"{PEFT_PREFIX}{name}.{key}"] = t
    return out


def load_adapter_state(
    model: nn.Module, spec: LoraSpec, tensors: dict[str, torch.Tensor], source: str
) -> None:
    """Copies an adapter file's tensors into a model that `add_lora(spec)` wrapped; the keys must be
    exactly the adapter's (a file for other targets or another rank is refused, listing the keys)."""
    expected = adapter_state(model, spec)
    check_keys(expected, tensors, source)
    with torch.no_grad():
        for key, p in expected.items():
            check_tensor(tensors[key], p, key, source)
            p.copy_(tensors[key])


def save_adapter(
    folder: Path, model: nn.Module, spec: LoraSpec, base: str | None, revision: str | None = None
) -> None:
    """Writes PEFT's two files into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in adapter_state(model, spec).items()}
    write_atomic(folder / ADAPTER_WEIGHTS, save(state, metadata={"format": "pt"}))
    write_json(folder / ADAPTER_CONFIG, spec.to_peft(base, revision), indent=2)


def is_adapter(folder: Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def read_adapter(folder: Path) -> tuple[LoraSpec, str, str | None, dict[str, torch.Tensor]]:
    """(spec, base checkpoint as named, its revision, tensors) of the adapter in `folder`; the base as a
    folder: `smolvla.hub.adapter_base`."""
    path = Path(folder) / ADAPTER_CONFIG
    d = read_json_object(path, error=CheckpointError)
    spec = LoraSpec.from_peft(d, str(path))
    weights = Path(folder) / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{folder}: {ADAPTER_CONFIG} without {ADAPTER_WEIGHTS}")
    return spec, str(d.get("base_model_name_or_path")), d.get("revision"), read_safetensors(weights)
