"""`SmolVLAPolicy`: LeRobot's policy API (batch in, loss or actions out) over our network.

The batch is what LeRobot's preprocessor produces: normalized state, tokenized language, images as
float [B, 3, H, W] in [0, 1]. `smolvla.processing.make_pre_post_processors` builds that from raw
observations. Every input is validated here, with the field named in the error.
"""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smolvla.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    CheckpointError,
    backbone_weight_files,
    bundle_backbone_files,
    is_portable_name,
    load_state,
    read_safetensors,
    resolve_backbone,
    save_state,
)
from smolvla.config import (
    ACTION,
    ACTION_IS_PAD,
    OBS_STATE,
    OBS_TOKEN_MASK,
    OBS_TOKENS,
    BackboneConfig,
    ConfigError,
    SmolVLAConfig,
)
from smolvla.errors import SmolVLAError
from smolvla.hub import ADAPTER_CONFIG, adapter_base, resolve_dir
from smolvla.io import write_json
from smolvla.model import lora
from smolvla.model.vla import Guidance, Observation, VLAFlowMatching
from smolvla.processing.images import resize_with_pad


class BatchError(SmolVLAError, ValueError):
    """A batch field is missing or not what the policy expects."""


def _check_image_sizes(config: SmolVLAConfig, backbone: BackboneConfig) -> None:
    """The vision tower cuts images into patches and the connector merges scale_factor^2 of them into a
    token: each side the model sees must be a multiple of patch_size x scale_factor."""
    step = backbone.vision.patch_size * backbone.scale_factor
    if config.resize_imgs_with_padding is not None:
        sizes = {"resize_imgs_with_padding": tuple(config.resize_imgs_with_padding)}
    else:
        sizes = {f"input_features[{k!r}]": tuple(f.shape[1:]) for k, f in config.image_features.items()}
    for field, size in sizes.items():
        if any(side % step for side in size):
            raise ConfigError(
                f"{field}: got {size}, expected sides that are multiples of {step} (patch size "
                f"{backbone.vision.patch_size} x scale factor {backbone.scale_factor}), e.g. "
                f"{tuple(max(step, round(side / step) * step) for side in size)}"
            )


class SmolVLAPolicy(nn.Module):
    name = "smolvla"

    def __init__(
        self, config: SmolVLAConfig, backbone: BackboneConfig | None = None, backbone_dir: Path | None = None
    ) -> None:
        super().__init__()
        if backbone is None:
            backbone, backbone_dir = resolve_backbone(config)
        if config.action_feature is None:
            raise BatchError(
                "output_features: no 'action' feature; the policy needs one to know the action width"
            )
        _check_image_sizes(config, backbone)
        self.config = config
        self.backbone = backbone
        self.backbone_dir = backbone_dir
        self.model = VLAFlowMatching(config, backbone)
        if config.add_image_special_tokens:
            ids = (backbone.fake_image_token_id, backbone.global_image_token_id)
            if max(ids) >= backbone.text.vocab_size:
                raise BatchError(
                    f"add_image_special_tokens: the image delimiter ids {ids} are outside the vocabulary "
                    f"({backbone.text.vocab_size}); the backbone folder needs its tokenizer.json"
                )
            self.model.image_start_ids = [backbone.fake_image_token_id, backbone.global_image_token_id]
            self.model.image_end_ids = [backbone.fake_image_token_id]
        if config.compile_model:  # compiled on first call; the denoising step and the training pass
            torch.set_float32_matmul_precision("high")
            vwe = self.model.vlm_with_expert
            vwe.denoise = torch.compile(vwe.denoise, mode=config.compile_mode)
            vwe.forward = torch.compile(vwe.forward, mode=config.compile_mode)
        self._file_dtypes: dict[str, torch.dtype] = {}
        self.pretrained_path: Path | None = None
        # A LoRA adapter held unmerged (add_adapter, or loaded with merge_adapter=False): what it is and
        # the checkpoint it adapts, written into adapter_config.json on save.
        self.adapter: lora.LoraSpec | None = None
        self.adapter_base: str | None = None
        self.adapter_revision: str | None = None
        # Set by prepare_for_inference (a runtime choice, never written to config.json).
        self.inference_mode: str | None = None
        self.reset()
        self._set_requires_grad()

    # -- construction and files ----------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: SmolVLAConfig) -> SmolVLAPolicy:
        """A new policy: random weights, or SmolVLM2's when `config.load_vlm_weights` is true."""
        backbone, folder = resolve_backbone(config)
        policy = cls(config, backbone, folder)
        if config.load_vlm_weights:
            policy.load_vlm_weights()
        return policy

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | Path,
        *,
        device: str | torch.device | None = None,
        inference_mode: str | None = None,
        merge_adapter: bool = True,
        **overrides: Any,
    ) -> SmolVLAPolicy:
        """Loads a checkpoint folder (ours or LeRobot's) or a hub repo id; `overrides` set config fields.

        `inference_mode` ("auto", "fp32", "bf16", "int8"): load straight into an inference-only policy
        (see `prepare_for_inference`) without ever holding the fp32 model in memory.

        A LoRA adapter folder (PEFT's adapter_config.json + adapter_model.safetensors, as LeRobot and
        `smolvla train --peft.*` write it) loads its base checkpoint (`base_model_name_or_path`) and then
        the adapter, merged into the weights (`merge_adapter`, for inference: no extra matmul per layer)
        or kept apart (to train it further, or to save it back as an adapter)."""
        folder = resolve_dir(
            str(path_or_repo_id),
            allow_patterns=["*.json", "*.safetensors", "vlm/*", "tokenizer/*"],
        )
        config = SmolVLAConfig.load(folder / CONFIG_FILE)
        if overrides:
            config = config.override(**overrides)
        if lora.is_adapter(folder):
            policy = cls._from_adapter(folder, config)
            if merge_adapter or inference_mode is not None:
                policy.merge_adapter()
            if inference_mode is not None:
                if device is not None and torch.device(device).type != "cpu":
                    raise ConfigError(
                        f"inference_mode: {inference_mode!r} prepares for CPUs, got device {device!r}"
                    )
                policy.prepare_for_inference(inference_mode)
            elif device is not None:
                policy.to(device)
            return policy.eval()
        backbone, backbone_dir = resolve_backbone(config, folder)
        if inference_mode is not None:
            from smolvla.model.inference import load_prepared

            if device is not None and torch.device(device).type != "cpu":
                raise ConfigError(
                    f"inference_mode: {inference_mode!r} prepares for CPUs, got device {device!r}; "
                    "on a GPU load without it (and use set_precision)"
                )

            policy = load_prepared(
                lambda: cls(config, backbone, backbone_dir), folder / MODEL_FILE, inference_mode
            )
            policy.pretrained_path = folder
            return policy
        policy = cls(config, backbone, backbone_dir)
        # The checkpoint holds the backbone weights too, so SmolVLM2's are never downloaded here.
        policy._file_dtypes = load_state(
            policy, read_safetensors(folder / MODEL_FILE), str(folder / MODEL_FILE)
        )
        policy.pretrained_path = folder
        if device is not None:
            policy.to(device)
        return policy.eval()

    @classmethod
    def _from_adapter(cls, folder: Path, config: SmolVLAConfig) -> SmolVLAPolicy:
        """The base checkpoint's weights under this folder's config, then the adapter on top (LeRobot's
        make_policy: the base policy, then PeftModel.from_pretrained)."""
        spec, base, revision, tensors = lora.read_adapter(folder)
        base_dir = adapter_base(folder)
        if lora.is_adapter(base_dir):
            raise CheckpointError(
                f"{folder / ADAPTER_CONFIG}: its base {base} is itself an adapter; merge that one "
                "first (smolvla merge) and train on the merged checkpoint"
            )
        # LeRobot writes no backbone files beside an adapter: a relative backbone name is the base's.
        bundled = (folder / config.vlm_model_name / CONFIG_FILE).is_file()
        backbone, backbone_dir = resolve_backbone(config, folder if bundled else base_dir)
        policy = cls(config, backbone, backbone_dir)
        policy._file_dtypes = load_state(
            policy, read_safetensors(base_dir / MODEL_FILE), str(base_dir / MODEL_FILE)
        )
        policy.add_adapter(spec, base, revision)
        lora.load_adapter_state(policy, spec, tensors, str(folder / lora.ADAPTER_WEIGHTS))
        policy.pretrained_path = folder
        return policy

    # -- LoRA adapters -------------------------------------------------------------------------------

    def add_adapter(self, spec: lora.LoraSpec, base: str | None, revision: str | None = None) -> list[str]:
        """Wraps the layers `spec` targets with LoRA adapters and freezes everything else (PEFT's
        get_peft_model). `base`: the checkpoint these weights came from (a folder or hub repo id),
        which the saved adapter names. Returns the wrapped module names."""
        if self.inference_mode is not None:
            raise RuntimeError(
                "add_adapter: this policy was prepared for inference; load it plainly to train"
            )
        wrapped = lora.add_lora(self, spec)
        self.adapter, self.adapter_base, self.adapter_revision = spec, base, revision
        return wrapped

    def merge_adapter(self) -> list[str]:
        """Folds the adapter into the weights: a plain policy again, computing the same actions. The
        merged layers (and the modules the adapter trained in full) save in fp32 from now on, whatever
        the base checkpoint stored: a bf16 weight cannot hold a small update. Returns the merged names."""
        if self.adapter is None:
            return []
        spec = self.adapter
        full = [n for n, _ in self.named_modules() if n and spec.saves(n)]
        merged = lora.merge_lora(self)
        for name in [*merged, *full]:
            for key in list(self._file_dtypes):
                if key.startswith(name + "."):
                    del self._file_dtypes[key]
        self.adapter = self.adapter_base = self.adapter_revision = None
        self.requires_grad_(True)
        self._set_requires_grad()
        return merged

    def save_pretrained(self, save_dir: str | Path) -> None:
        """Writes `config.json` and `model.safetensors` in LeRobot's layout. Tensors keep the dtypes of
        the file they were loaded from, so a loaded checkpoint saves back bit-identically. A backbone
        from a local folder is written beside them (`vlm/config.json`, tokenizer files) and referenced
        as `vlm`, so the folder is self-contained; known names and hub repo ids are kept as they are.
        A policy holding an unmerged adapter saves as LeRobot's PEFT checkpoints do: config.json
        (`use_peft: true`), adapter_config.json and adapter_model.safetensors."""
        if self.inference_mode is not None:
            raise RuntimeError(
                f"save_pretrained: this policy was prepared for inference ({self.inference_mode}): its "
                "projections are fused or quantized and unused weights are gone; save before preparing"
            )
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        config = self.config
        if not is_portable_name(config.vlm_model_name):
            name = bundle_backbone_files(self.backbone_dir, save_dir)
            write_json(save_dir / name / CONFIG_FILE, self.backbone.to_hf_dict())
            config = config.override(vlm_model_name=name)
        if self.adapter is not None:  # PEFT's files and LeRobot's config.json, no full weights
            config.override(use_peft=True).save(save_dir / CONFIG_FILE)
            lora.save_adapter(save_dir, self, self.adapter, self.adapter_base, self.adapter_revision)
            return
        config.override(use_peft=False).save(save_dir / CONFIG_FILE)
        save_state(self, save_dir / MODEL_FILE, self._file_dtypes)

    def load_vlm_weights(self) -> None:
        """Loads SmolVLM2's own weights (vision tower, connector, embeddings, first N text layers)."""
        name = self.config.vlm_model_name
        folder = self.backbone_dir or resolve_dir(
            name, allow_patterns=["*.json", "*.safetensors"], what="backbone weights"
        )
        tensors: dict[str, torch.Tensor] = {}
        for f in backbone_weight_files(folder):
            tensors.update(read_safetensors(f))
        n = self.config.num_vlm_layers
        dropped = re.compile(r"model\.text_model\.layers\.(\d+)\.")
        kept = {k: v for k, v in tensors.items() if not ((m := dropped.match(k)) and int(m.group(1)) >= n)}
        load_state(self.model.vlm_with_expert.vlm, kept, f"backbone weights in {folder}")

    # -- precision -----------------------------------------------------------------------------------

    def set_precision(
        self, dtype: torch.dtype, frozen_only: bool = False, exact_only: bool = False
    ) -> SmolVLAPolicy:
        """Runs the backbone and expert in `dtype` (e.g. bf16); the five small projections stay fp32,
        as in LeRobot's checkpoints. Saving still writes each tensor in its file dtype.

        frozen_only: only the parts that are not trained (the vision tower with freeze_vision_encoder,
        the whole VLM with train_expert_only), as LeRobot runs its bf16-loaded VLM while training: the
        trained weights and their optimizer state stay fp32.
        exact_only (with frozen_only): only the frozen parts whose every value `dtype` holds exactly
        (a bf16 checkpoint such as smolvla_base, loaded as fp32), so that no weight changes."""
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ConfigError(f"dtype: got {dtype}, expected torch.float32, torch.bfloat16 or torch.float16")
        if not frozen_only:
            self.model.vlm_with_expert.to(dtype)
            return self
        vlm = self.model.vlm_with_expert.vlm
        for part in (vlm.model.vision_model, vlm.model.connector, *vlm.model.text_model.layers):
            params = list(part.parameters())
            if any(p.requires_grad for p in params):
                continue
            if exact_only and not all(torch.equal(p, p.to(dtype).to(p.dtype)) for p in params):
                continue
            part.to(dtype)
        return self

    def prepare_for_inference(self, mode: str = "auto") -> SmolVLAPolicy:
        """Makes this policy inference-only and faster (smolvla.model.inference): fused q/k/v and gate/up
        GEMMs, unused weights dropped, and "fp32", "bf16" or "int8" weights ("auto": the fastest this
        CPU runs natively). Training and saving are refused afterwards."""
        from smolvla.model.inference import prepare

        self.merge_adapter()
        prepare(self, mode)
        return self

    # -- training ------------------------------------------------------------------------------------

    def _set_requires_grad(self) -> None:
        cfg, vwe = self.config, self.model.vlm_with_expert
        vlm = vwe.vlm
        if cfg.freeze_vision_encoder:
            vlm.model.vision_model.requires_grad_(False)
        if cfg.train_expert_only:
            vlm.requires_grad_(False)
        # Parameters that never influence the actions get no gradient; freezing them keeps DDP from
        # waiting for them: lm_head, the final norm, layers after the last one an expert reads, and that
        # layer's query, output projection and MLP (only its keys and values are read).
        vlm.lm_head.requires_grad_(False)
        vlm.model.text_model.norm.requires_grad_(False)
        layers = vlm.model.text_model.layers
        for layer in layers[vwe.last_used + 1 :]:
            layer.requires_grad_(False)
        last = layers[vwe.last_used]
        for m in (last.self_attn.q_proj, last.self_attn.o_proj, last.mlp, last.post_attention_layernorm):
            m.requires_grad_(False)
        self.model.state_proj.requires_grad_(cfg.train_state_proj)

    def set_gradient_checkpointing(self, enabled: bool = True) -> SmolVLAPolicy:
        """Recompute activations in the backward pass instead of keeping them: each VLM + expert layer
        pair, each expert layer of the cached-prefix pass, each vision layer when the tower trains.
        Costs about one more forward per step; the loss and gradients are the same."""
        vwe = self.model.vlm_with_expert
        vwe.gradient_checkpointing = enabled
        vwe.vlm.model.vision_model.gradient_checkpointing = enabled
        return self

    def train(self, mode: bool = True) -> SmolVLAPolicy:
        super().train(mode)
        # Frozen parts stay in eval mode (no dropout exists, but a user's hooks may look at it).
        if self.config.train_expert_only:
            self.model.vlm_with_expert.vlm.eval()
        elif self.config.freeze_vision_encoder:
            self.model.vlm_with_expert.vlm.model.vision_model.eval()
        return self

    def forward(
        self,
        batch: dict[str, Any],
        noise: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Flow-matching loss, averaged over in-episode steps x real action dims.

        Returns (loss, info); info holds detached tensors (no device sync here): the losses before
        and after masking, and `per_sample` (B,). reduction "none" returns the per-sample loss.
        """
        if self.inference_mode is not None:
            raise RuntimeError(
                f"forward: this policy was prepared for inference ({self.inference_mode}) and cannot be "
                "trained; load the checkpoint without inference_mode to train"
            )
        if reduction not in ("mean", "none"):
            raise BatchError(f"reduction: got {reduction!r}, expected 'mean' or 'none'")
        obs = self.prepare_observation(batch)
        actions = self._check_actions(batch, obs.batch_size)
        a = actions.shape[-1]
        is_pad = batch.get(ACTION_IS_PAD)
        if is_pad is None:
            is_pad = torch.zeros(actions.shape[:2], dtype=torch.bool, device=actions.device)
        elif tuple(is_pad.shape) != tuple(actions.shape[:2]) or is_pad.dtype != torch.bool:
            raise BatchError(
                f"{ACTION_IS_PAD}: got {tuple(is_pad.shape)} {is_pad.dtype}, "
                f"expected bool of shape {tuple(actions.shape[:2])}"
            )
        losses = self.model(
            obs,
            self._pad(actions, self.config.max_action_dim),
            noise=self._check_noise(noise, actions.shape[0]),
            time=time,
        )  # (B, S, max_action_dim)
        kept = losses[:, :, :a] * (~is_pad)[:, :, None]  # real action dims, in-episode steps
        count = ((~is_pad).sum(dim=1) * a).clamp(min=1)  # (B,)
        per_sample = kept.sum(dim=(1, 2)) / count
        loss = kept.sum() / count.sum().clamp(min=1)
        info = {
            "loss": loss.detach(),
            "losses_after_forward": losses.detach()[:, :, :a].mean(),
            "losses_after_in_ep_bound": kept.detach().mean(),
            "per_sample": per_sample.detach(),
        }
        return (per_sample if reduction == "none" else loss), info

    # -- inference -----------------------------------------------------------------------------------

    def reset(self) -> None:
        """Empties the action queue: call at the start of each episode."""
        self._queue: deque[torch.Tensor] = deque(maxlen=self.config.n_action_steps)

    @torch.no_grad()
    def predict_action_chunk(
        self,
        batch: dict[str, Any] | Observation,
        noise: torch.Tensor | None = None,
        num_steps: int | None = None,
        guidance: Guidance | None = None,
    ) -> torch.Tensor:
        """A chunk of normalized actions (B, chunk_size, action_dim). `batch` may already be an
        Observation (`prepare_observation`); `guidance`: a hook on each Euler step (RTC's)."""
        obs = batch if isinstance(batch, Observation) else self.prepare_observation(batch)
        noise = self._check_noise(noise, obs.batch_size)
        x = self.model.sample_actions(obs, noise=noise, num_steps=num_steps, guidance=guidance)
        return x[:, :, : self.config.action_feature.shape[0]]

    @torch.no_grad()
    def select_action(self, batch: dict[str, Any], noise: torch.Tensor | None = None) -> torch.Tensor:
        """One normalized action (B, action_dim); a new chunk is computed every n_action_steps calls."""
        if not self._queue:
            chunk = self.predict_action_chunk(batch, noise)
            self._queue.extend(chunk.transpose(0, 1)[: self.config.n_action_steps])
        return self._queue.popleft()

    # -- batch preparation (validated) ---------------------------------------------------------------

    def prepare_observation(self, batch: dict[str, Any]) -> Observation:
        """The network's input from a preprocessed batch, every field validated: images to [-1, 1]
        (resized with padding, empty cameras filled), state padded to max_state_dim."""
        if not isinstance(batch, dict):
            raise BatchError(f"batch: got {type(batch).__name__}, expected a dict of tensors")
        state = self._prepare_state(batch)
        b = state.shape[0]
        images, img_masks = self._prepare_images(batch, b)
        tokens, token_mask = self._prepare_language(batch, b)
        return Observation(images, img_masks, tokens, token_mask, state)

    def _prepare_images(self, batch: dict[str, Any], b: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        cfg = self.config
        cams = list(cfg.image_features)
        present = [k for k in cams if k in batch]
        missing = [k for k in cams if k not in batch]
        if not present or len(missing) > cfg.empty_cameras:
            raise BatchError(
                f"missing camera(s) {missing}: the policy was configured with {cams} and empty_cameras="
                f"{cfg.empty_cameras}; provide them (or rename your keys onto them with a rename_map)"
            )
        images, masks = [], []
        for key in present:
            img = batch[key]
            if not isinstance(img, torch.Tensor):
                raise BatchError(f"{key}: got {type(img).__name__}, expected a torch.Tensor [B, 3, H, W]")
            if img.ndim == 5:  # (B, T, C, H, W): the latest step
                img = img[:, -1]
            if img.ndim != 4 or img.shape[1] != 3 or img.shape[0] != b:
                raise BatchError(
                    f"{key}: got shape {tuple(img.shape)}, expected [{b}, 3, H, W] (batch of {b})"
                )
            if not img.is_floating_point():
                raise BatchError(
                    f"{key}: got dtype {img.dtype}, expected float in [0, 1] (divide uint8 images by 255)"
                )
            lo, hi = float(img.min()), float(img.max())
            if lo < -1e-3 or hi > 1 + 1e-3:
                hint = " (looks like 0-255 values: divide by 255)" if hi > 2 else ""
                raise BatchError(f"{key}: values in [{lo:.3g}, {hi:.3g}], expected [0, 1]{hint}")
            images.append(self.model_image(img))
            m = batch.get(f"{key}_padding_mask")
            masks.append(
                torch.ones(b, dtype=torch.bool, device=img.device) if m is None else m.bool().reshape(b)
            )
        for _ in missing:  # empty cameras (config.empty_cameras): all -1, masked out of attention
            images.append(torch.full_like(images[-1], -1.0))
            masks.append(torch.zeros(b, dtype=torch.bool, device=images[-1].device))
        return images, masks

    def model_image(self, img: torch.Tensor) -> torch.Tensor:
        """A validated camera batch (B, 3, H, W) in [0, 1] -> what the vision tower takes: resized with
        padding to the config's size, in SigLIP's [-1, 1] (black padding becomes -1)."""
        if self.config.resize_imgs_with_padding is not None:
            img = resize_with_pad(img, *self.config.resize_imgs_with_padding, pad_value=0)
        return img * 2.0 - 1.0

    def _prepare_state(self, batch: dict[str, Any]) -> torch.Tensor:
        state = batch.get(OBS_STATE)
        if state is None:
            raise BatchError(f"{OBS_STATE}: missing from the batch (keys: {sorted(batch)})")
        if not isinstance(state, torch.Tensor) or not state.is_floating_point():
            raise BatchError(
                f"{OBS_STATE}: got {getattr(state, 'dtype', type(state).__name__)}, "
                "expected a float tensor [B, D]"
            )
        if state.ndim == 3 and state.shape[1] == 1:
            state = state[:, 0]
        if state.ndim != 2:
            raise BatchError(f"{OBS_STATE}: got shape {tuple(state.shape)}, expected [B, D]")
        want = self.config.state_feature.shape[0] if self.config.state_feature else None
        if state.shape[1] > self.config.max_state_dim or (want is not None and state.shape[1] != want):
            raise BatchError(
                f"{OBS_STATE}: width {state.shape[1]}, expected {want or f'<= {self.config.max_state_dim}'}"
                f" (config input_features / max_state_dim={self.config.max_state_dim})"
            )
        if not torch.isfinite(state).all():
            raise BatchError(f"{OBS_STATE}: contains NaN or inf")
        return self._pad(state.float(), self.config.max_state_dim)

    def _prepare_language(self, batch: dict[str, Any], b: int) -> tuple[torch.Tensor, torch.Tensor]:
        for key in (OBS_TOKENS, OBS_TOKEN_MASK):
            if key not in batch:
                raise BatchError(
                    f"{key}: missing from the batch; tokenize the task with the preprocessor "
                    "(smolvla.processing.make_pre_post_processors)"
                )
        tokens, mask = batch[OBS_TOKENS], batch[OBS_TOKEN_MASK]
        if tokens.ndim != 2 or tokens.shape[0] != b or tokens.dtype not in (torch.int64, torch.int32):
            raise BatchError(
                f"{OBS_TOKENS}: got {tuple(tokens.shape)} {tokens.dtype}, expected int64 [{b}, L]"
            )
        if tuple(mask.shape) != tuple(tokens.shape):
            raise BatchError(
                f"{OBS_TOKEN_MASK}: got shape {tuple(mask.shape)}, expected {tuple(tokens.shape)}"
            )
        vocab = self.backbone.text.vocab_size
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
            raise BatchError(
                f"{OBS_TOKENS}: ids in [{int(tokens.min())}, {int(tokens.max())}], expected [0, {vocab}) "
                "(the tokenizer does not match the backbone's vocabulary)"
            )
        return tokens.long(), mask.bool()

    def _check_actions(self, batch: dict[str, Any], b: int) -> torch.Tensor:
        actions = batch.get(ACTION)
        a = self.config.action_feature.shape[0]
        want = (b, self.config.chunk_size, a)
        if actions is None:
            raise BatchError(
                f"{ACTION}: missing from the batch (training needs the action chunk {list(want)})"
            )
        if (
            not isinstance(actions, torch.Tensor)
            or tuple(actions.shape) != want
            or not actions.is_floating_point()
        ):
            raise BatchError(
                f"{ACTION}: got {tuple(getattr(actions, 'shape', ()))} {getattr(actions, 'dtype', '')}, "
                f"expected float {list(want)} (batch, chunk_size, action dim)"
            )
        if not torch.isfinite(actions).all():
            raise BatchError(f"{ACTION}: contains NaN or inf")
        return actions.float()

    def _check_noise(self, noise: torch.Tensor | None, b: int) -> torch.Tensor | None:
        want = (b, self.config.chunk_size, self.config.max_action_dim)
        if noise is not None and tuple(noise.shape) != want:
            raise BatchError(f"noise: got shape {tuple(noise.shape)}, expected {want}")
        return noise

    @staticmethod
    def _pad(x: torch.Tensor, width: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[-1]))


def merge_checkpoint(adapter: str | Path, output_dir: str | Path) -> Path:
    """`smolvla merge`: a LoRA adapter checkpoint (ours or LeRobot's) as a plain one in `output_dir`:
    the base weights with the adapter folded in, the adapter folder's config (`use_peft: false`),
    processor files and train_config.json. Every loader, exporter and inference mode takes the result."""
    import shutil

    from smolvla.processing.pipeline import PROCESSOR_FILES

    folder = resolve_dir(str(adapter), allow_patterns=["*.json", "*.safetensors", "vlm/*", "tokenizer/*"])
    if not lora.is_adapter(folder):
        raise CheckpointError(
            f"--policy.path: {folder} holds no LoRA adapter ({ADAPTER_CONFIG}); nothing to merge"
        )
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"--output_dir: {out} is not empty; merge into a new folder")
    policy = SmolVLAPolicy.from_pretrained(folder, merge_adapter=True)
    policy.save_pretrained(out)
    files = {q for pattern in [*PROCESSOR_FILES, "train_config.json"] for q in folder.glob(pattern)}
    for src in sorted(f for f in files if f.is_file()):
        dst = out / src.relative_to(folder)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    return out
