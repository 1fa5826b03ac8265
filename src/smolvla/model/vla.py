"""SmolVLA's network: the truncated SmolVLM2, the action expert beside it, and flow matching.

Reads top to bottom as the computation runs:
  prefix  = [64 image tokens per camera] + [language tokens] + [state token]       (embed_prefix)
  suffix  = 50 noisy-action tokens, each fused with the flow time t                  (embed_suffix)
  layers  = VLM layer i beside expert layer j; self-attention layers attend jointly over
            [prefix; suffix], cross-attention layers let the expert read the VLM's keys/values
  loss    = || v(x_t, t) - (noise - actions) ||^2                                     (forward)
  sample  = prefill the prefix once (prefill), then Euler steps of velocity() from t=1 (noise) to
            t=0 (actions), optionally steered by a guidance hook such as RTC's      (sample_actions)
Shapes: B batch, P prefix length, S suffix length (= chunk_size), D VLM width, E expert width,
H heads, KV key/value heads, Dh head dim.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from smolvla.config import BackboneConfig, ConfigError, SmolVLAConfig, expert_intermediate_size
from smolvla.flow import euler
from smolvla.model.backbone import (
    DecoderLayer,
    RMSNorm,
    SmolVLM,
    apply_rope,
    attention,
    attention_bias,
    rope_tables,
)


def make_att_2d_masks(pad_masks: torch.Tensor, ar_marks: torch.Tensor) -> torch.Tensor:
    """Token i attends to j iff cumsum(ar)[j] <= cumsum(ar)[i] and both are real (big_vision).

    pad_masks, ar_marks (B, N) -> (B, N, N) bool.
    """
    c = torch.cumsum(ar_marks, dim=1)
    return (c[:, None, :] <= c[:, :, None]) & (pad_masks[:, None, :] & pad_masks[:, :, None])


def sinusoidal_time_embedding(
    t: torch.Tensor, dim: int, min_period: float, max_period: float
) -> torch.Tensor:
    """t (B,) -> (B, dim): [sin, cos] over geometric periods, computed in float64 where available."""
    if dim % 2:
        raise ConfigError(f"time embedding width: got {dim}, expected an even number")
    dtype = torch.float32 if t.device.type in ("mps", "xpu") else torch.float64
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=dtype, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = (2 * math.pi / period)[None, :] * t[:, None].to(dtype)
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


class Expert(nn.Module):
    """The action expert: a narrower Llama stack without embeddings (`lm_expert` in checkpoints)."""

    def __init__(self, cfg: SmolVLAConfig, backbone: BackboneConfig, kinds: list[str]) -> None:
        super().__init__()
        text = backbone.text
        width = int(text.hidden_size * cfg.expert_width_multiplier)
        inter = expert_intermediate_size(width)
        kv_dim = text.num_key_value_heads * text.head_dim
        self.layers = nn.ModuleList(
            DecoderLayer(text, width, inter, kv_in=kv_dim if kind == "ca" else None) for kind in kinds
        )
        self.norm = RMSNorm(width, text.rms_norm_eps)
        self.width = width


class VLMWithExpert(nn.Module):
    """The VLM and the expert side by side (`vlm_with_expert` in checkpoints)."""

    def __init__(self, cfg: SmolVLAConfig, backbone: BackboneConfig) -> None:
        super().__init__()
        n_vlm, n_exp = cfg.num_vlm_layers, cfg.n_expert_layers
        if n_vlm > backbone.text.num_hidden_layers:
            raise ConfigError(
                f"num_vlm_layers: got {n_vlm}, but the backbone {cfg.vlm_model_name!r} has only "
                f"{backbone.text.num_hidden_layers} text layers"
            )
        self.vlm = SmolVLM(backbone, n_vlm)
        # Expert layer j sits on VLM layer j * (n_vlm // n_exp); its kind (self- or cross-attention) is
        # decided by that VLM layer. (LeRobot 0.6.1 decides by j when building and by the VLM index when
        # running, which breaks num_expert_layers < num_vlm_layers; with equal counts both agree.)
        stride = n_vlm // n_exp
        self.expert_at: list[int | None] = [i // stride if i % stride == 0 else None for i in range(n_vlm)]
        self.kinds = [self._kind(cfg, i) for i in range(n_vlm)]
        self.lm_expert = Expert(cfg, backbone, [self.kinds[j * stride] for j in range(n_exp)])
        # The last VLM layer an expert layer reads from: later layers, and that layer's own attention
        # output and MLP, never influence the actions, so the prefix pass stops there.
        self.last_used = max(i for i, j in enumerate(self.expert_at) if j is not None)
        # Recompute each layer's activations in the backward pass instead of keeping them (a training
        # setting, never saved: LeRobot's config has no such field and results do not change).
        self.gradient_checkpointing = False

    @staticmethod
    def _kind(cfg: SmolVLAConfig, i: int) -> str:
        n = cfg.self_attn_every_n_layers
        if not cfg.cross_attention or (n > 0 and i % n == 0):
            return "sa"
        return "ca"

    def expert_layer(self, i: int) -> DecoderLayer | None:
        j = self.expert_at[i]
        return None if j is None else self.lm_expert.layers[j]

    def forward(
        self,
        prefix: torch.Tensor,
        suffix: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        constant_prefix: int = 0,
    ) -> torch.Tensor:
        """Training pass, no cache. prefix (B, P, D), suffix (B, S, E), mask (B, P+S, P+S),
        positions (B, P+S) -> expert output (B, S, E) after the final norm.

        constant_prefix: how many leading prefix tokens attend only among themselves (images and
        language, before the state). When the whole VLM is frozen, those tokens' keys and values
        depend on no trained weight, so they are computed without autograd (no activations kept, no
        backward through 16 layers); the remaining prefix tokens (the state, fed by the trained
        state_proj) and the expert keep theirs. The result is the same as the joint pass."""
        p = prefix.shape[1]
        if 0 < constant_prefix <= p and torch.is_grad_enabled() and not self._vlm_trained():
            c = constant_prefix
            with torch.no_grad():  # detached first: a view made under no_grad would still require grad
                kvs = self._prefix_kv(prefix[:, :c].detach(), mask[:, :c, :c], positions[:, :c])
            if c < p:
                kvs = self._prefix_kv(prefix[:, c:], mask[:, c:p, :p], positions[:, c:p], past=kvs)
            return self.denoise(
                suffix, self._expert_cache(kvs), mask[:, p, :p], mask[:, p:, p:], positions[:, p:]
            )
        suf_pos_ca = positions[:, p:] - positions[:, p:].min(dim=1, keepdim=True).values
        for i in range(self.last_used + 1):
            prefix, suffix = self._checkpointed(
                self._joint_layer, i, prefix, suffix, mask, positions, suf_pos_ca
            )
        return self.lm_expert.norm(suffix)

    def _joint_layer(
        self,
        i: int,
        prefix: torch.Tensor,
        suffix: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        suf_pos_ca: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """VLM layer i and the expert layer on it, over both streams: (B, P, D), (B, S, E) -> same."""
        p = prefix.shape[1]
        vlm = self.vlm.model.text_model.layers[i]
        exp = self.expert_layer(i)
        q, k, v = vlm.qkv(prefix)
        if exp is not None and self.kinds[i] == "sa":
            qs, ks, vs = exp.qkv(suffix)
            q = apply_rope(torch.cat([q, qs.to(q.dtype)], 1), positions)
            k = apply_rope(torch.cat([k, ks.to(k.dtype)], 1), positions)
            att = attention(q, k, torch.cat([v, vs.to(v.dtype)], 1), mask)  # (B, P+S, H*Dh)
            suffix = exp.finish(suffix, att[:, p:])
            if i < self.last_used:
                prefix = vlm.finish(prefix, att[:, :p])
            return prefix, suffix
        pre_pos = positions[:, :p]
        q, k = apply_rope(q, pre_pos), apply_rope(k, pre_pos)
        if exp is not None:  # cross-attention: expert queries over the VLM's rotated k/v
            ck, cv = exp.project_kv(k, v)
            qs = apply_rope(exp.query(suffix), suf_pos_ca)
            suffix = exp.finish(suffix, attention(qs, ck, cv, mask[:, p:, :p]))
        if i < self.last_used:
            prefix = vlm.finish(prefix, attention(q, k, v, mask[:, :p, :p]))
        return prefix, suffix

    def _checkpointed(self, fn: Callable, *args: Any) -> Any:
        """fn(*args), or, with gradient checkpointing on while autograd records, the same without keeping
        its activations: they are recomputed in the backward pass (one more forward of the layer)."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _vlm_trained(self) -> bool:
        return any(p.requires_grad for p in self.vlm.parameters())

    def _prefix_kv(
        self, x: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, past: list | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Runs prefix tokens x (B, N, D) through the VLM layers the expert reads, attending to `past`
        (per layer, the rotated k and v of earlier tokens) and to themselves: mask (B, N, past + N),
        positions (B, N). Returns per layer the rotated k and v of past and x, (B, past + N, KV, Dh)."""
        out = []
        rope = rope_tables(positions, self.vlm.model.text_model.layers[0].self_attn.head_dim)
        for i in range(self.last_used + 1):
            vlm = self.vlm.model.text_model.layers[i]
            q, k, v = vlm.qkv(x)
            k = apply_rope(k, tables=rope)
            if past is not None:
                k, v = torch.cat([past[i][0], k], 1), torch.cat([past[i][1], v], 1)
            out.append((k, v))
            if i < self.last_used:
                x = vlm.finish(x, attention(apply_rope(q, tables=rope), k, v, mask))
        return out

    def _expert_cache(self, kvs: list[tuple[torch.Tensor, torch.Tensor]]) -> list:
        cache: list = []
        for i, (k, v) in enumerate(kvs):
            exp = self.expert_layer(i)
            if exp is None:
                cache.append(None)
            elif self.kinds[i] == "sa":
                cache.append((k, v))
            else:
                cache.append(exp.project_kv(k, v))
        return cache

    @torch.no_grad()
    def prefix_cache(self, prefix: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> list:
        """Runs the prefix alone (every layer as self-attention) and returns, per VLM layer, the
        keys/values the expert reads: for self-attention layers the VLM's rotated k and v
        (B, P, KV, Dh); for cross-attention layers those already projected by the expert, so that the
        denoising loop does not redo it at every step. None where no expert layer sits."""
        return self._expert_cache(self._prefix_kv(prefix, mask, positions))

    def denoise(
        self,
        suffix: torch.Tensor,
        cache: list,
        prefix_pad: torch.Tensor,
        suffix_mask: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """Suffix pass against the cached prefix. suffix (B, S, E), prefix_pad (B, P) bool,
        suffix_mask (B, S, S), positions (B, S) -> expert output (B, S, E)."""
        s = suffix.shape[1]
        cross_mask = prefix_pad[:, None, :].expand(-1, s, -1)  # (B, S, P)
        joint_mask = torch.cat([cross_mask, suffix_mask], dim=2)  # (B, S, P+S)
        # Rotary tables and additive masks are the same in every layer: built once per step, per dtype.
        head_dim = self.lm_expert.layers[0].self_attn.head_dim
        rope_sa = rope_tables(positions, head_dim)
        rope_ca = rope_tables(positions - positions.min(dim=1, keepdim=True).values, head_dim)
        biases: dict = {}

        def bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
            key = (id(mask), dtype)
            if key not in biases:
                biases[key] = attention_bias(mask, dtype)
            return biases[key]

        def layer(i: int, suffix: torch.Tensor, k0: torch.Tensor, v0: torch.Tensor) -> torch.Tensor:
            exp = self.expert_layer(i)
            if self.kinds[i] == "sa":
                qs, ks, vs = exp.qkv(suffix)
                qs, ks = apply_rope(qs, tables=rope_sa), apply_rope(ks, tables=rope_sa)
                k, v = torch.cat([k0, ks.to(k0.dtype)], 1), torch.cat([v0, vs.to(v0.dtype)], 1)
                att = attention(qs.to(k.dtype), k, v, bias(joint_mask, k.dtype))
            else:
                qs = apply_rope(exp.query(suffix), tables=rope_ca)
                att = attention(qs.to(k0.dtype), k0, v0, bias(cross_mask, k0.dtype))
            return exp.finish(suffix, att)

        for i, kv in enumerate(cache):
            if self.expert_layer(i) is not None:
                suffix = self._checkpointed(layer, i, suffix, kv[0], kv[1])
        return self.lm_expert.norm(suffix)


# On the CPU, vision-tower calls of about one full-size image (32 x 32 patches), whose activations stay
# in cache. Measured with int8 weights and 3 cameras: at 512 px 0.60 s per image one per call against
# 0.71 all together, at 384 px 0.82 s against 0.89 for the three (fp32 and bf16 no slower). Small
# images still go many per call: the tiny preset's training step (64 images of 64 patches) takes
# 0.51-0.54 s in calls of 16 images, 0.50-0.54 all at once, 0.78 one image per call.
VISION_TOKENS_PER_CALL_CPU = 1024


@dataclass
class Observation:
    """What the network sees, already normalized and padded (built by `SmolVLAPolicy.prepare_observation`)."""

    images: list[torch.Tensor]  # per camera (B, 3, H, W) in [-1, 1]
    image_masks: list[torch.Tensor]  # per camera (B,) bool: False for an empty camera
    tokens: torch.Tensor  # (B, L) int64 language token ids
    token_mask: torch.Tensor  # (B, L) bool: real tokens
    state: torch.Tensor  # (B, max_state_dim) fp32

    @property
    def batch_size(self) -> int:
        return self.state.shape[0]


@dataclass
class Prefix:
    embs: torch.Tensor  # (B, P, D)
    pad: torch.Tensor  # (B, P) bool: real tokens
    ar: torch.Tensor  # (B, P) int: autoregressive marks (0 image/language, 1 state)


@dataclass
class PrefixCache:
    """Everything a denoising step reads about the observation, computed once per chunk by `prefill`."""

    kv: list | None  # per VLM layer what its expert layer reads (None where none sits); None: no cache
    prefix_pad: torch.Tensor  # (B, P) bool
    suffix_mask: torch.Tensor  # (B, S, S) bool: actions attend causally
    positions: torch.Tensor  # (B, S): the action tokens continue the prefix's positions
    prefix: Prefix | None = None  # kept only without a cache (use_cache=False): re-run at every step


def suffix_layout(prefix_pad: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The action tokens' attention among themselves (B, S, S) bool, causal, and their positions
    (B, S), which continue the prefix's real tokens. prefix_pad (B, P) bool."""
    b, device = prefix_pad.shape[0], prefix_pad.device
    suffix_mask = make_att_2d_masks(
        torch.ones(b, s, dtype=torch.bool, device=device),
        torch.ones(b, s, dtype=torch.long, device=device),
    )
    positions = prefix_pad.sum(dim=1, keepdim=True) + torch.arange(s, device=device)[None]
    return suffix_mask, positions


# guidance(x_t, t, velocity_fn) -> v: replaces v(x_t, t) in an Euler step. velocity_fn(x) is the step's
# velocity at flow time t against the prefilled prefix; a hook may call it under autograd (RTC does).
Guidance = Callable[[torch.Tensor, float, Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]


class VLAFlowMatching(nn.Module):
    """SmolVLA's network (`model` in checkpoints). Inputs are already normalized and padded."""

    def __init__(self, cfg: SmolVLAConfig, backbone: BackboneConfig) -> None:
        super().__init__()
        self.cfg, self.backbone = cfg, backbone
        self.vlm_with_expert = VLMWithExpert(cfg, backbone)
        d, e = backbone.text.hidden_size, self.vlm_with_expert.lm_expert.width
        self.state_proj = nn.Linear(cfg.max_state_dim, d)
        self.action_in_proj = nn.Linear(cfg.max_action_dim, e)
        self.action_out_proj = nn.Linear(e, cfg.max_action_dim)
        self.action_time_mlp_in = nn.Linear(2 * e, e)
        self.action_time_mlp_out = nn.Linear(e, e)
        # Token ids of the optional image delimiters (set from the tokenizer by the policy).
        self.image_start_ids: list[int] = []
        self.image_end_ids: list[int] = []
        # Patch tokens per vision-tower call (None: every image of a size in one call; "auto": by device).
        self.vision_tokens_per_call: int | str | None = "auto"

    # -- token streams -------------------------------------------------------------------------------

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.vlm_with_expert.vlm.model.text_model.embed_tokens(ids)

    def embed_prefix(self, obs: Observation) -> Prefix:
        """[image tokens per camera] + [language tokens] + [state token] -> Prefix (B, P, D)."""
        state = obs.state
        b = state.shape[0]
        embs, pads, ars = [], [], []

        def add(x: torch.Tensor, pad: torch.Tensor, ar: int) -> None:
            embs.append(x)
            pads.append(pad)
            ars.append(torch.full(pad.shape, ar, dtype=torch.long, device=pad.device))

        def add_ids(ids: list[int]) -> None:
            if ids:
                x = self.embed_tokens(torch.tensor(ids, device=state.device))[None].expand(b, -1, -1)
                add(x, torch.ones(b, len(ids), dtype=torch.bool, device=state.device), 0)

        img_embs = self._embed_images(obs.images)
        for emb, m in zip(img_embs, obs.image_masks, strict=True):
            add_ids(self.image_start_ids)
            # The scale is a tensor in the embedding dtype (31.0 in bf16), as LeRobot computes it.
            emb = emb * torch.tensor(emb.shape[-1] ** 0.5, dtype=emb.dtype, device=emb.device)
            add(emb, m[:, None].expand(b, emb.shape[1]), 0)
            add_ids(self.image_end_ids)
        lang = self.embed_tokens(obs.tokens)
        add(lang * math.sqrt(lang.shape[-1]), obs.token_mask.bool(), 0)
        st = self.state_proj(state.to(self.state_proj.weight.dtype))  # (B, D), not scaled
        add(st[:, None], torch.ones(b, 1, dtype=torch.bool, device=state.device), 1)
        # Mixed dtypes (bf16 backbone, fp32 state_proj) promote, as torch.cat does in LeRobot.
        dtype = functools.reduce(torch.promote_types, (x.dtype for x in embs))
        prefix = Prefix(torch.cat([x.to(dtype) for x in embs], 1), torch.cat(pads, 1), torch.cat(ars, 1))
        n = prefix.embs.shape[1]
        if self.cfg.prefix_length > n:
            extra = self.cfg.prefix_length - n
            prefix = Prefix(
                F.pad(prefix.embs, (0, 0, 0, extra)),
                F.pad(prefix.pad, (0, extra)),
                F.pad(prefix.ar, (0, extra)),
            )
        return prefix

    def _embed_images(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per camera (B, 3, H, W) -> (B, T, D). Images never interact in the vision tower, so how they
        are grouped into calls changes nothing but speed: cameras of one size go together, in calls of
        at most `vision_tokens_per_call` patch tokens (at least one image per call)."""
        vlm = self.vlm_with_expert.vlm
        patch = vlm.model.vision_model.embeddings.patch_size
        budget = self.vision_tokens_per_call
        if budget == "auto":
            budget = VISION_TOKENS_PER_CALL_CPU if images and images[0].device.type == "cpu" else None
        out: list[torch.Tensor | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(tuple(img.shape[1:]), []).append(i)
        for shape, idx in groups.items():
            pixels = torch.cat([images[i] for i in idx], 0)  # (n*B, 3, H, W)
            n = (
                len(pixels)
                if budget is None
                else max(1, budget // ((shape[1] // patch) * (shape[2] // patch)))
            )
            emb = torch.cat([vlm.embed_image(part) for part in pixels.split(n)])  # (n*B, T, D)
            for i, e in zip(idx, emb.chunk(len(idx)), strict=True):
                out[i] = e
        return out  # type: ignore[return-value]

    def embed_suffix(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t (B, S, max_action_dim), t (B,) -> action tokens (B, S, E)."""
        a = self.action_in_proj(x_t)
        te = sinusoidal_time_embedding(t, a.shape[-1], self.cfg.min_period, self.cfg.max_period).to(a.dtype)
        h = torch.cat([a, te[:, None].expand_as(a)], dim=2)  # action first, then time
        h = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(h)))
        return h.to(self._expert_dtype)

    @property
    def _expert_dtype(self) -> torch.dtype:
        return self.vlm_with_expert.lm_expert.norm.weight.dtype

    def _velocity(self, out: torch.Tensor) -> torch.Tensor:
        w = self.action_out_proj.weight
        return self.action_out_proj(out[:, -self.cfg.chunk_size :].to(torch.float32).to(w.dtype)).float()

    # -- training ------------------------------------------------------------------------------------

    def forward(
        self,
        obs: Observation,
        actions: torch.Tensor,
        noise: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-element flow-matching loss (B, S, max_action_dim). actions are normalized and padded."""
        if noise is None:
            noise = torch.randn_like(actions, dtype=torch.float32)
        if time is None:
            time = sample_time(actions.shape[0], actions.device)
        t = time[:, None, None]
        x_t = t * noise + (1 - t) * actions  # (B, S, A): t=1 is noise, t=0 the actions
        u_t = noise - actions
        v_t = self.joint_velocity(self.embed_prefix(obs), x_t, time)
        return F.mse_loss(u_t, v_t, reduction="none")

    def joint_velocity(self, prefix: Prefix, x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """v(x_t, t) from one joint pass over [prefix; suffix] (training, and sampling without a cache)."""
        suffix = self.embed_suffix(x_t, time)
        b, s = suffix.shape[:2]
        pad = torch.cat([prefix.pad, torch.ones(b, s, dtype=torch.bool, device=suffix.device)], 1)
        ar = torch.cat([prefix.ar, torch.ones(b, s, dtype=torch.long, device=suffix.device)], 1)
        mask = make_att_2d_masks(pad, ar)  # image+language bidirectional, state after, actions causal
        positions = torch.cumsum(pad, dim=1) - 1  # padding repeats the previous position
        constant = int((prefix.ar.cumsum(dim=1) == 0).all(dim=0).sum())  # tokens before the state
        return self._velocity(self.vlm_with_expert(prefix.embs, suffix, mask, positions, constant))

    # -- inference: prefill once, then Euler steps of velocity() -----------------------------------------

    @torch.no_grad()
    def prefill(self, obs: Observation, use_cache: bool | None = None) -> PrefixCache:
        """Embeds the observation and runs the prefix through the VLM once. use_cache (None: the
        config's): False keeps only the embeddings, and every step re-runs the whole [prefix; suffix]
        pass (LeRobot's use_cache=False, which crashes there, spec §8.9): slower, same result."""
        prefix = self.embed_prefix(obs)
        suffix_mask, positions = suffix_layout(prefix.pad, self.cfg.chunk_size)
        if not (self.cfg.use_cache if use_cache is None else use_cache):
            return PrefixCache(None, prefix.pad, suffix_mask, positions, prefix)
        kv = self.vlm_with_expert.prefix_cache(
            prefix.embs, make_att_2d_masks(prefix.pad, prefix.ar), torch.cumsum(prefix.pad, dim=1) - 1
        )
        return PrefixCache(kv, prefix.pad, suffix_mask, positions)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cache: PrefixCache) -> torch.Tensor:
        """One denoising step: v(x_t, t) against the prefilled prefix. x_t (B, S, max_action_dim),
        t (B,) -> (B, S, max_action_dim)."""
        if cache.kv is None:
            return self.joint_velocity(cache.prefix, x_t, t)
        suffix = self.embed_suffix(x_t, t)  # (B, S, E)
        out = self.vlm_with_expert.denoise(
            suffix, cache.kv, cache.prefix_pad, cache.suffix_mask, cache.positions
        )
        return self._velocity(out)

    @torch.no_grad()
    def sample_actions(
        self,
        obs: Observation,
        noise: torch.Tensor | None = None,
        num_steps: int | None = None,
        guidance: Guidance | None = None,
        cache: PrefixCache | None = None,
    ) -> torch.Tensor:
        """Euler integration of the learned velocity from t=1 (noise) to t=0. -> (B, S, max_action_dim).

        guidance: a hook that replaces each step's velocity (see `Guidance`; RTC's is one).
        cache: `prefill(obs)`'s result, when the caller already has it (the benchmark times it apart)."""
        b = obs.batch_size
        shape = (b, self.cfg.chunk_size, self.cfg.max_action_dim)
        x = torch.randn(shape, device=obs.state.device) if noise is None else noise.to(torch.float32).clone()
        cache = self.prefill(obs) if cache is None else cache

        def v(x_t: torch.Tensor, t: float) -> torch.Tensor:
            t_b = torch.full((b,), t, dtype=torch.float32, device=x_t.device)
            if guidance is None:
                return self.velocity(x_t, t_b, cache)
            return guidance(x_t, t, lambda x_: self.velocity(x_, t_b, cache))

        return euler(x, num_steps or self.cfg.num_steps, v)


def sample_time(batch: int, device: torch.device | str) -> torch.Tensor:
    """t = 0.999 * Beta(1.5, 1) + 0.001, drawn on the CPU (as LeRobot, so seeds give the same draws)."""
    beta = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0))
    return (beta.sample((batch,)) * 0.999 + 0.001).to(device=device, dtype=torch.float32)
