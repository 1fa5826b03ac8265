"""Configuration: the SmolVLA policy config (LeRobot's `config.json`), the backbone config, presets.

Configs are frozen dataclasses. Change one with `dataclasses.replace` or `SmolVLAConfig.override`, which
also parses command-line strings. `SmolVLAConfig.to_dict` / `from_dict` read and write the exact JSON
LeRobot writes, so checkpoints move between the two projects.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from smolvla.errors import SmolVLAError
from smolvla.io import read_json_object, write_json

# Batch keys, as LeRobot names them.
OBS_STATE = "observation.state"
OBS_ENV_STATE = "observation.environment_state"
OBS_IMAGE = "observation.image"
OBS_IMAGES = "observation.images"
OBS_TOKENS = "observation.language.tokens"
OBS_TOKEN_MASK = "observation.language.attention_mask"
ACTION = "action"
ACTION_IS_PAD = "action_is_pad"
TASK = "task"


class ConfigError(SmolVLAError, ValueError):
    """A config value, or a config file, is not what SmolVLA accepts."""


# The largest size any config value may ask of the allocator: a dimension, a length, an image side.
# SmolVLA's own values are far below (32-wide state, 50-step chunks, 512-px images); a value above this is
# a typo (or hostile), and would otherwise reach torch as an allocation of terabytes, or an out-of-memory
# kill, instead of an error naming the field.
MAX_SIZE = 1 << 14


class FeatureType(str, Enum):
    VISUAL = "VISUAL"
    STATE = "STATE"
    ACTION = "ACTION"
    ENV = "ENV"
    LANGUAGE = "LANGUAGE"
    REWARD = "REWARD"


class NormMode(str, Enum):
    IDENTITY = "IDENTITY"
    MEAN_STD = "MEAN_STD"
    MIN_MAX = "MIN_MAX"
    QUANTILES = "QUANTILES"  # q01 / q99
    QUANTILE10 = "QUANTILE10"  # q10 / q90


@dataclass(frozen=True)
class PolicyFeature:
    type: FeatureType
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type.value, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str = "feature") -> PolicyFeature:
        if not isinstance(d, dict):
            raise ConfigError(f"{name}: got {d!r:.80}, expected an object with 'type' and 'shape'")
        try:
            ftype = FeatureType(d["type"])
        except (KeyError, ValueError, TypeError) as e:
            raise ConfigError(
                f"{name}.type: got {d.get('type')!r}, expected one of {[t.value for t in FeatureType]}"
            ) from e
        shape = d.get("shape")
        if (
            not isinstance(shape, (list, tuple))
            or not shape
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= MAX_SIZE for s in shape)
        ):
            raise ConfigError(
                f"{name}.shape: got {shape!r}, expected a non-empty list of integers in 1..{MAX_SIZE}"
            )
        return cls(ftype, tuple(shape))


def features_from_dict(d: dict[str, Any], name: str) -> dict[str, PolicyFeature]:
    if not isinstance(d, dict):
        raise ConfigError(f"{name}: got {type(d).__name__}, expected a mapping of feature name to feature")
    return {k: PolicyFeature.from_dict(v, f"{name}.{k}") for k, v in d.items()}


def features_to_dict(features: dict[str, PolicyFeature]) -> dict[str, Any]:
    return {k: f.to_dict() for k, f in features.items()}


# --------------------------------------------------------------------------------------------------
# Backbone (SmolVLM2): vision tower + connector + Llama text model


@dataclass(frozen=True)
class VisionConfig:
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 512
    patch_size: int = 16
    layer_norm_eps: float = 1e-6


@dataclass(frozen=True)
class TextConfig:
    hidden_size: int = 960
    intermediate_size: int = 2560
    num_hidden_layers: int = 32
    num_attention_heads: int = 15
    num_key_value_heads: int = 5
    head_dim: int = 64
    vocab_size: int = 49280
    rms_norm_eps: float = 1e-5


@dataclass(frozen=True)
class BackboneConfig:
    """The parts of a SmolVLM2 `config.json` that SmolVLA's computation depends on."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    scale_factor: int = 4  # pixel-shuffle factor of the connector
    image_token_id: int = 49190
    # Delimiters around each image when `add_image_special_tokens` is on (ids in the tokenizer).
    global_image_token_id: int = 49152
    fake_image_token_id: int = 49189

    @property
    def tokens_per_image(self) -> int:
        side = self.vision.image_size // self.vision.patch_size
        return (side // self.scale_factor) ** 2

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> BackboneConfig:
        """Reads a SmolVLM(2) `config.json` as written by transformers."""
        if d.get("model_type") not in ("smolvlm", "idefics3"):
            raise ConfigError(
                f"{source}: model_type {d.get('model_type')!r} is not a SmolVLM backbone "
                "(expected 'smolvlm' or 'idefics3')"
            )
        try:
            t, v = d["text_config"], d["vision_config"]
        except KeyError as e:
            raise ConfigError(f"{source}: missing {e.args[0]!r}") from e

        def pick(section: dict, name: str, key: str, default: Any = None) -> Any:
            if key in section:
                return section[key]
            if default is None:
                raise ConfigError(f"{source}: {name}.{key} is missing")
            return default

        act_t, act_v = t.get("hidden_act", "silu"), v.get("hidden_act", "gelu_pytorch_tanh")
        if act_t != "silu" or act_v != "gelu_pytorch_tanh":
            raise ConfigError(
                f"{source}: activations ({act_t!r}, {act_v!r}) are not SmolVLM's "
                "('silu', 'gelu_pytorch_tanh')"
            )
        heads = pick(t, "text_config", "num_attention_heads")
        hidden = pick(t, "text_config", "hidden_size")
        text = TextConfig(
            hidden_size=hidden,
            intermediate_size=pick(t, "text_config", "intermediate_size"),
            num_hidden_layers=pick(t, "text_config", "num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=pick(t, "text_config", "num_key_value_heads", heads),
            head_dim=pick(t, "text_config", "head_dim", hidden // heads),
            vocab_size=pick(t, "text_config", "vocab_size", d.get("vocab_size")),
            rms_norm_eps=pick(t, "text_config", "rms_norm_eps", 1e-5),
        )
        vision = VisionConfig(
            hidden_size=pick(v, "vision_config", "hidden_size"),
            intermediate_size=pick(v, "vision_config", "intermediate_size"),
            num_hidden_layers=pick(v, "vision_config", "num_hidden_layers"),
            num_attention_heads=pick(v, "vision_config", "num_attention_heads"),
            image_size=pick(v, "vision_config", "image_size"),
            patch_size=pick(v, "vision_config", "patch_size"),
            layer_norm_eps=pick(v, "vision_config", "layer_norm_eps", 1e-6),
        )
        return cls(
            vision=vision,
            text=text,
            scale_factor=d.get("scale_factor", 2),
            image_token_id=d.get("image_token_id", 0),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """A SmolVLM `config.json` that transformers (and so LeRobot) can build the backbone from."""
        t, v = self.text, self.vision
        return {
            "architectures": ["SmolVLMForConditionalGeneration"],
            "model_type": "smolvlm",
            "image_token_id": self.image_token_id,
            "scale_factor": self.scale_factor,
            "text_config": {
                "model_type": "llama",
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads,
                "num_key_value_heads": t.num_key_value_heads,
                "head_dim": t.head_dim,
                "vocab_size": t.vocab_size,
                "rms_norm_eps": t.rms_norm_eps,
                "rope_theta": 100000,
                "hidden_act": "silu",
                "attention_bias": False,
                "mlp_bias": False,
                "tie_word_embeddings": False,
                "max_position_embeddings": 8192,
                "pad_token_id": 2,
            },
            "vision_config": {
                "model_type": "smolvlm_vision",
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_hidden_layers": v.num_hidden_layers,
                "num_attention_heads": v.num_attention_heads,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "layer_norm_eps": v.layer_norm_eps,
                "hidden_act": "gelu_pytorch_tanh",
            },
            "tie_word_embeddings": False,
            "vocab_size": t.vocab_size,
            "torch_dtype": "float32",
        }


SMOLVLM2_500M = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
SMOLVLM2_256M = "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"
TINY_BACKBONE = "smolvla/tiny-backbone"
MICRO_BACKBONE = "smolvla/micro-backbone"

# Backbones known by name, so that a checkpoint naming them needs no download for its architecture.
# 500M: ../shared/reference/smolvlm2_500m_config.json. 256M: SmolLM2-135M text model, same SigLIP tower.
KNOWN_BACKBONES: dict[str, BackboneConfig] = {
    SMOLVLM2_500M: BackboneConfig(),
    SMOLVLM2_256M: BackboneConfig(
        text=TextConfig(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            head_dim=64,
        ),
    ),
    # Built-in small backbones for the CPU (random init; trained from scratch). Vocab 320 fits the
    # byte-level tokenizer that ships with the package.
    TINY_BACKBONE: BackboneConfig(
        vision=VisionConfig(
            hidden_size=192,
            intermediate_size=384,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=64,
            patch_size=8,
        ),
        text=TextConfig(
            hidden_size=192,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=48,
            vocab_size=320,
        ),
        scale_factor=2,
        image_token_id=261,
        global_image_token_id=259,
        fake_image_token_id=260,
    ),
    MICRO_BACKBONE: BackboneConfig(
        vision=VisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=16,
            patch_size=4,
        ),
        text=TextConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            vocab_size=320,
        ),
        scale_factor=2,
        image_token_id=261,
        global_image_token_id=259,
        fake_image_token_id=260,
    ),
}


# --------------------------------------------------------------------------------------------------
# The policy config


def expert_intermediate_size(hidden: int, ffn_dim_multiplier: float = 4.0, multiple_of: int = 256) -> int:
    """LeRobot's `get_intermediate_size`: 2/3 of 4x the width, rounded up to a multiple of 256."""
    h = int(2 * hidden / 3)
    h = int(ffn_dim_multiplier * h)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


@dataclass(frozen=True)
class SmolVLAConfig:
    """SmolVLA's config, field for field as LeRobot's `SmolVLAConfig` (and in its order)."""

    # Inherited from LeRobot's PreTrainedConfig.
    n_obs_steps: int = 1
    input_features: dict[str, PolicyFeature] = field(default_factory=dict)
    output_features: dict[str, PolicyFeature] = field(default_factory=dict)
    device: str | None = None
    use_amp: bool = False
    use_peft: bool = False
    push_to_hub: bool = True
    repo_id: str | None = None
    private: bool | None = None
    tags: list[str] | None = None
    license: str | None = None
    pretrained_path: str | None = None
    pretrained_revision: str | None = None
    # SmolVLA's own.
    chunk_size: int = 50
    n_action_steps: int = 50
    normalization_mapping: dict[str, NormMode] = field(
        default_factory=lambda: {
            "VISUAL": NormMode.IDENTITY,
            "STATE": NormMode.MEAN_STD,
            "ACTION": NormMode.MEAN_STD,
        }
    )
    max_state_dim: int = 32
    max_action_dim: int = 32
    resize_imgs_with_padding: tuple[int, int] | None = (512, 512)  # (width, height)
    empty_cameras: int = 0
    adapt_to_pi_aloha: bool = False
    use_delta_joint_actions_aloha: bool = False
    tokenizer_max_length: int = 48
    num_steps: int = 10
    use_cache: bool = True
    freeze_vision_encoder: bool = True
    train_expert_only: bool = True
    train_state_proj: bool = True
    optimizer_lr: float = 1e-4
    optimizer_betas: tuple[float, float] = (0.9, 0.95)
    optimizer_eps: float = 1e-8
    optimizer_weight_decay: float = 1e-10
    optimizer_grad_clip_norm: float = 10
    scheduler_warmup_steps: int = 1000
    scheduler_decay_steps: int = 30000
    scheduler_decay_lr: float = 2.5e-6
    vlm_model_name: str = SMOLVLM2_500M
    load_vlm_weights: bool = False
    add_image_special_tokens: bool = False
    attention_mode: str = "cross_attn"
    prefix_length: int = -1
    pad_language_to: str = "longest"
    num_expert_layers: int = -1
    num_vlm_layers: int = 16
    self_attn_every_n_layers: int = 2
    expert_width_multiplier: float = 0.75
    min_period: float = 4e-3
    max_period: float = 4.0
    rtc_config: dict[str, Any] | None = None
    compile_model: bool = False
    compile_mode: str = "max-autotune"

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(f"{name}: got {getattr(self, name)!r}, expected {expected}")

        for name in (
            "chunk_size",
            "n_action_steps",
            "max_state_dim",
            "max_action_dim",
            "num_steps",
            "tokenizer_max_length",
            "num_vlm_layers",
            "n_obs_steps",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_SIZE:
                raise bad(name, f"a positive integer (at most {MAX_SIZE})")
        for name in ("empty_cameras", "self_attn_every_n_layers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_SIZE:
                raise bad(name, f"a non-negative integer (at most {MAX_SIZE})")
        for name in ("prefix_length", "num_expert_layers"):  # <= 0 means "off" / "as many as the VLM"
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v > MAX_SIZE:
                raise bad(name, f"an integer up to {MAX_SIZE}")
        if self.n_action_steps > self.chunk_size:
            raise ConfigError(
                f"n_action_steps: got {self.n_action_steps}, expected at most chunk_size ({self.chunk_size})"
            )
        if self.n_obs_steps != 1:
            raise bad("n_obs_steps", "1 (SmolVLA uses one observation step)")
        if self.adapt_to_pi_aloha:
            raise bad("adapt_to_pi_aloha", "False (the Aloha joint conversions are not supported)")
        if self.rtc_config is not None:
            raise bad("rtc_config", "None (real-time chunking is not available yet)")
        if self.use_delta_joint_actions_aloha:
            raise bad("use_delta_joint_actions_aloha", "False (LeRobot does not implement it either)")
        if self.pad_language_to not in ("longest", "max_length"):
            raise bad("pad_language_to", "'longest' or 'max_length'")
        for name in ("expert_width_multiplier", "min_period", "max_period"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise bad(name, "a finite positive number")
        if self.expert_width_multiplier > 16:
            raise bad("expert_width_multiplier", "at most 16 (the expert's width relative to the VLM's)")
        if not 0 < self.min_period < self.max_period:
            raise ConfigError(
                f"min_period/max_period: got {self.min_period}/{self.max_period}, expected 0 < min < max"
            )
        if self.num_expert_layers > 0 and self.num_vlm_layers % self.num_expert_layers != 0:
            raise ConfigError(
                f"num_expert_layers: got {self.num_expert_layers}, expected a divisor of "
                f"num_vlm_layers ({self.num_vlm_layers}) or <= 0 for one expert layer per VLM layer"
            )
        size = self.resize_imgs_with_padding
        if size is not None and (
            not isinstance(size, (tuple, list))
            or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIZE for v in size)
        ):
            raise bad("resize_imgs_with_padding", f"(width, height) of integers in 1..{MAX_SIZE}, or None")
        for key in self.normalization_mapping:
            if key not in FeatureType.__members__:
                raise ConfigError(
                    f"normalization_mapping: unknown feature type {key!r}, expected one of "
                    f"{list(FeatureType.__members__)}"
                )
        for name, feats in (
            ("input_features", self.input_features),
            ("output_features", self.output_features),
        ):
            for key, feat in feats.items():
                if not isinstance(feat, PolicyFeature):
                    raise ConfigError(f"{name}.{key}: got {feat!r}, expected a PolicyFeature")
        for key, feat in self.image_features.items():
            self._check_camera(key, feat)
        if self.state_feature is not None and self.state_feature.shape[0] > self.max_state_dim:
            raise ConfigError(
                f"input_features.observation.state: width {self.state_feature.shape[0]} is larger than "
                f"max_state_dim ({self.max_state_dim}); raise max_state_dim (changes the checkpoint's "
                "state_proj shape)"
            )
        if self.action_feature is not None and self.action_feature.shape[0] > self.max_action_dim:
            raise ConfigError(
                f"output_features.action: width {self.action_feature.shape[0]} is larger than "
                f"max_action_dim ({self.max_action_dim})"
            )

    def _check_camera(self, key: str, feat: PolicyFeature) -> None:
        # A camera must survive the letterbox resize with at least one row and column: a 1 x 4096 frame
        # resized into 512 x 512 keeps 0 rows, and torch fails deep inside the model on the empty image.
        if len(feat.shape) != 3 or feat.shape[0] != 3:
            raise ConfigError(
                f"input_features.{key}.shape: got {list(feat.shape)}, expected [3, height, width]"
            )
        _, h, w = feat.shape
        if self.resize_imgs_with_padding is not None:
            size = self.resize_imgs_with_padding
            tw, th = size
            ratio = max(w / tw, h / th)
            if int(h / ratio) < 1 or int(w / ratio) < 1:
                raise ConfigError(
                    f"input_features.{key}.shape: got {list(feat.shape)}, which keeps no row or column "
                    f"when resized into resize_imgs_with_padding {list(size)} (expected an image "
                    "whose aspect ratio keeps at least 1 x 1 pixels)"
                )

    # -- derived values ------------------------------------------------------------------------------

    @property
    def image_features(self) -> dict[str, PolicyFeature]:
        """Cameras in config order (the order their tokens take in the prefix)."""
        return {k: f for k, f in self.input_features.items() if f.type == FeatureType.VISUAL}

    @property
    def state_feature(self) -> PolicyFeature | None:
        return self.input_features.get("observation.state")

    @property
    def action_feature(self) -> PolicyFeature | None:
        return self.output_features.get("action")

    @property
    def cross_attention(self) -> bool:
        return "cross" in self.attention_mode

    @property
    def n_expert_layers(self) -> int:
        return self.num_expert_layers if self.num_expert_layers > 0 else self.num_vlm_layers

    @property
    def observation_delta_indices(self) -> list[int]:
        return [0]

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    # -- (de)serialization ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "smolvla"}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("input_features", "output_features"):
                v = features_to_dict(v)
            elif f.name == "normalization_mapping":
                v = {k: NormMode(m).value for k, m in v.items()}
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> SmolVLAConfig:
        """A config from LeRobot's `config.json` contents. Every field but `OPTIONAL_FIELDS` must be there:
        a missing `chunk_size` must not become 50 in a checkpoint trained with 16."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: got {type(d).__name__}, expected a JSON object of config fields")
        d = dict(d)
        if "type" not in d:
            raise ConfigError(f"{source}: type is missing, expected 'smolvla' (LeRobot writes it first)")
        ptype = d.pop("type")
        if ptype != "smolvla":
            raise ConfigError(
                f"{source}: type is {ptype!r}, expected 'smolvla' (this is another policy's checkpoint)"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in d if k not in names]
        if unknown:
            hints = [
                f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, names, 1)) else k
                for k in unknown
            ]
            raise ConfigError(f"{source}: unknown SmolVLA config field(s): {', '.join(hints)}")
        missing = [
            f.name for f in dataclasses.fields(cls) if f.name not in d and f.name not in OPTIONAL_FIELDS
        ]
        if missing:
            raise ConfigError(
                f"{source}: missing field(s) {', '.join(missing)}, which shape the network or its inputs; "
                "a checkpoint's config.json must name them (LeRobot writes every field)"
            )
        kwargs: dict[str, Any] = {}
        for k, v in d.items():
            kwargs[k] = _coerce_field(k, v, source)
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict(), indent=4)

    @classmethod
    def load(cls, path: str | Path) -> SmolVLAConfig:
        return cls.from_dict(read_json_object(path, ConfigError), source=str(path))

    def override(self, **values: Any) -> SmolVLAConfig:
        """`replace` that also accepts strings (from a command line) and names the bad field."""
        d = self.to_dict()
        names = {f.name for f in dataclasses.fields(self)}
        for k, v in values.items():
            if k not in names:
                close = difflib.get_close_matches(k, names, 1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ConfigError(f"unknown SmolVLA config field {k!r}{hint}")
            d[k] = _decode_flag(k, v) if isinstance(v, str) else v
        return SmolVLAConfig.from_dict(d)


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(SmolVLAConfig)}

# Fields a config.json may leave out; they take LeRobot's defaults. LeRobot 0.6.1 writes every field
# (PreTrainedConfig._save_pretrained is draccus.encode of the whole dataclass; see the parity checkpoint's
# config.json) and reads a missing one as its default (from_pretrained goes through draccus.parse), so
# these are absent only from configs written before the field existed in LeRobot (compile_model and
# compile_mode came with LeRobot PR #3043, see the spec; rtc_config, use_peft and pretrained_revision are
# also later additions to PreTrainedConfig / SmolVLAConfig) or by hand. None of them shapes
# the network or what it takes in: where it runs and in which precision, hub bookkeeping, training
# hyper-parameters and what training freezes, whether to fetch backbone weights that the checkpoint's
# weights replace anyway, and switches that change speed but not results (use_cache, compile_*). Every
# other field (features, chunk and state sizes, image size, backbone, layer layout, tokenizer length,
# denoising steps...) must be named: a default there silently builds a different policy.
OPTIONAL_FIELDS = frozenset(
    {
        "device",
        "use_amp",
        "use_peft",
        "push_to_hub",
        "repo_id",
        "private",
        "tags",
        "license",
        "pretrained_path",
        "pretrained_revision",
        "use_cache",
        "freeze_vision_encoder",
        "train_expert_only",
        "train_state_proj",
        "optimizer_lr",
        "optimizer_betas",
        "optimizer_eps",
        "optimizer_weight_decay",
        "optimizer_grad_clip_norm",
        "scheduler_warmup_steps",
        "scheduler_decay_steps",
        "scheduler_decay_lr",
        "load_vlm_weights",
        "rtc_config",
        "compile_model",
        "compile_mode",
    }
)


def _decode_flag(name: str, value: str) -> Any:
    """A command-line string for field `name`, decoded as draccus decodes every other flag."""
    import typing

    import draccus
    from draccus import cfgparsing

    try:
        v = draccus.decode(typing.get_type_hints(SmolVLAConfig)[name], cfgparsing.parse_string(value))
    except Exception as e:  # draccus raises plain Exceptions for some shapes: name the flag instead
        raise ConfigError(f"{name}: could not parse {value!r} as a {_FIELD_TYPES[name]}") from e
    return list(v) if isinstance(v, tuple) else v


def _coerce_field(name: str, v: Any, source: str) -> Any:
    ftype = str(_FIELD_TYPES[name])

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: {name} is {v!r}, expected {expected}")

    if name in ("input_features", "output_features"):
        return features_from_dict(v, f"{source}: {name}")
    if name == "normalization_mapping":
        if not isinstance(v, dict):
            raise bad("a mapping of feature type to normalization mode")
        try:
            return {k: NormMode(m) for k, m in v.items()}
        except (ValueError, TypeError):
            raise bad(f"modes among {[m.value for m in NormMode]}") from None
    if v is None:
        if "None" not in ftype:
            raise bad(f"a {ftype}")
        return None
    if ftype.startswith("bool"):
        if not isinstance(v, bool):
            raise bad("true or false")
        return v
    if ftype.startswith("int"):
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad("an integer")
        return v
    if ftype.startswith("float"):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad("a finite number")
        return v  # kept as written: LeRobot writes grad_clip_norm as 10, max_period as 4.0
    if ftype.startswith("str"):
        if not isinstance(v, str):
            raise bad("a string")
        return v
    if ftype.startswith("tuple"):
        item = "int" if ftype.startswith("tuple[int") else "float"
        if not isinstance(v, (list, tuple)) or len(v) != ftype.split("]")[0].count(",") + 1:
            raise bad(f"a list of {ftype.split('[')[1].split(']')[0].count(',') + 1} {item}s")
        for x in v:
            if isinstance(x, bool) or not isinstance(x, int if item == "int" else (int, float)):
                raise bad(f"a list of {item}s")
            if item == "float" and not math.isfinite(x):
                raise bad("a list of finite numbers")
        return tuple(v)
    if ftype.startswith("list[str]"):
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise bad("a list of strings")
        return list(v)
    if ftype.startswith("dict"):
        if not isinstance(v, dict):
            raise bad("an object")
        return v
    return v


# --------------------------------------------------------------------------------------------------
# Presets


def _base() -> SmolVLAConfig:
    """Exactly `lerobot/smolvla_base` (newer hub revision's camera names)."""
    cam = PolicyFeature(FeatureType.VISUAL, (3, 256, 256))
    return SmolVLAConfig(
        input_features={
            "observation.state": PolicyFeature(FeatureType.STATE, (6,)),
            "observation.images.camera1": cam,
            "observation.images.camera2": cam,
            "observation.images.camera3": cam,
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (6,))},
        load_vlm_weights=True,
        prefix_length=0,
        pad_language_to="max_length",
        num_expert_layers=0,
    )


def _tiny() -> SmolVLAConfig:
    """SmolVLA's structure at a size that trains from scratch on 2 CPU cores in minutes."""
    cam = PolicyFeature(FeatureType.VISUAL, (3, 64, 64))
    return SmolVLAConfig(
        input_features={
            "observation.images.camera1": cam,
            "observation.state": PolicyFeature(FeatureType.STATE, (4,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (4,))},
        vlm_model_name=TINY_BACKBONE,
        num_vlm_layers=4,
        chunk_size=16,
        # Executing the whole chunk scored best on the quickstart's tasks: 72 % vs 62 % with 8 or 4
        # (same checkpoint, 10 episodes per task; README).
        n_action_steps=16,
        max_state_dim=8,
        max_action_dim=8,
        resize_imgs_with_padding=(64, 64),
        tokenizer_max_length=24,
        freeze_vision_encoder=False,
        train_expert_only=False,
        optimizer_lr=3e-4,
    )


def _micro() -> SmolVLAConfig:
    """A few thousand parameters: for unit tests."""
    return SmolVLAConfig(
        input_features={
            "observation.images.camera1": PolicyFeature(FeatureType.VISUAL, (3, 16, 16)),
            "observation.images.camera2": PolicyFeature(FeatureType.VISUAL, (3, 12, 16)),
            "observation.state": PolicyFeature(FeatureType.STATE, (3,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        vlm_model_name=MICRO_BACKBONE,
        num_vlm_layers=2,
        chunk_size=4,
        n_action_steps=4,
        max_state_dim=4,
        max_action_dim=4,
        resize_imgs_with_padding=(16, 16),
        tokenizer_max_length=12,
        num_steps=3,
    )


PRESETS = {"base": _base, "tiny": _tiny, "micro": _micro}


def preset(name: str) -> SmolVLAConfig:
    """A named config: `base` (lerobot/smolvla_base), `tiny` (CPU training), `micro` (unit tests)."""
    if name not in PRESETS:
        raise ConfigError(f"preset: got {name!r}, expected one of {sorted(PRESETS)}")
    return PRESETS[name]()
