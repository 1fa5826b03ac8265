"""SmolVLM2's building blocks, our own code: SigLIP vision tower, pixel-shuffle connector, Llama layers.

Module and parameter names follow transformers' SmolVLM so that state-dict keys match LeRobot's
checkpoints (`...vision_model.encoder.layers.3.self_attn.q_proj.weight`, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from smolvla.config import BackboneConfig, TextConfig, VisionConfig

# --------------------------------------------------------------------------------------------------
# Attention and RoPE, shared by the backbone and the action expert


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An attention mask (B, Lq, Lk) bool as the additive bias `attention` uses: (B, 1, Lq, Lk).

    Masked scores get a finite minimum (as LeRobot does), not -inf: a fully masked row (a padding
    token) then attends uniformly instead of producing NaN, which would leak through later layers'
    value projections. fp32 and bf16 both take bf16's minimum: an fp32 graph run with bf16 arithmetic
    (OpenVINO's bf16 hint) would round fp32's own minimum to -inf. Softmax gives the same either way.
    """
    fill = torch.finfo(torch.float16 if dtype == torch.float16 else torch.bfloat16).min
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill_(~mask, fill)[:, None]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention. q (B, Lq, H, D), k/v (B, Lk, KV, D) -> (B, Lq, H*D).

    mask: (B, Lq, Lk) bool, or the bias `attention_bias` made from it in q's dtype (the denoising loop
    builds it once per step instead of once per layer), or None.
    """
    b, lq, h, d = q.shape
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, L, D)
    bias = None
    if mask is not None:
        bias = mask if mask.is_floating_point() else attention_bias(mask, q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=d**-0.5, enable_gqa=k.shape[1] != h)
    return out.transpose(1, 2).reshape(b, lq, h * d)


def rope_tables(
    positions: torch.Tensor, dim: int, max_wavelength: float = 10_000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, each (B, L, 1, dim/2) fp32, for `apply_rope`.

    SmolVLA hard-codes a base of 10 000 although SmolVLM2 was trained with 100 000 (spec §8.2);
    checkpoints were trained with 10 000, so that is what must be computed.
    """
    exponents = (2.0 / dim) * torch.arange(dim // 2, dtype=torch.float32, device=positions.device)
    radians = positions[..., None].float() / max_wavelength**exponents  # (B, L, D/2)
    return torch.cos(radians)[:, :, None], torch.sin(radians)[:, :, None]


def apply_rope(
    x: torch.Tensor,
    positions: torch.Tensor | None = None,
    max_wavelength: float = 10_000.0,
    tables: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Split-half rotary embedding in fp32. x (B, L, H, D); positions (B, L), or `tables` from
    `rope_tables` (a loop over layers at the same positions computes them once)."""
    cos, sin = rope_tables(positions, x.shape[-1], max_wavelength) if tables is None else tables
    dtype = x.dtype
    x = x.float()
    d_half = x.shape[-1] // 2
    x1, x2 = x[..., :d_half], x[..., d_half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(dtype)


# --------------------------------------------------------------------------------------------------
# Vision tower (SigLIP-style, as in SmolVLM)


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.side = cfg.image_size // cfg.patch_size
        self.patch_embedding = nn.Conv2d(3, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Embedding(self.side**2, cfg.hidden_size)

    def position_ids(self, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        """Position ids of a rows x cols patch grid, spread over the learned side x side grid.

        SmolVLM buckets fractional coordinates, so a full-size image gets 0..N-1 and a smaller one
        a sub-sampled grid of the same table.
        """
        bounds = torch.arange(1 / self.side, 1.0, 1 / self.side, device=device)
        fr = torch.bucketize(torch.arange(0, 1 - 1e-6, 1 / rows, device=device), bounds, right=True)
        fc = torch.bucketize(torch.arange(0, 1 - 1e-6, 1 / cols, device=device), bounds, right=True)
        return (fr[:, None] * self.side + fc[None, :]).flatten()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixels)  # (B, E, h, w)
        rows, cols = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, E)
        return x + self.position_embedding(self.position_ids(rows, cols, x.device))


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        e = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(e, e) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape
        shape = (b, n, self.heads, e // self.heads)  # (B, N, H, Dh)
        q, k, v = self.q_proj(x).view(shape), self.k_proj(x).view(shape), self.v_proj(x).view(shape)
        return self.out_proj(attention(q, k, v, None))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class VisionLayer(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = VisionAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = VisionMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(cfg) for _ in range(cfg.num_hidden_layers))


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.embeddings = VisionEmbeddings(cfg)
        self.encoder = VisionEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.gradient_checkpointing = False

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, H, W) in [-1, 1] -> patch features (B, N, E)."""
        x = self.embeddings(pixels)
        for layer in self.encoder.layers:
            # a trained tower keeps about a GB of activations per 512 px image: recompute them instead
            if self.gradient_checkpointing and torch.is_grad_enabled() and x.requires_grad:
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return self.post_layernorm(x)


class ModalityProjection(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out, bias=False)


class Connector(nn.Module):
    """Pixel shuffle (r x r patches into one token), then a bias-free projection to the text width."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.r = cfg.scale_factor
        self.modality_projection = ModalityProjection(
            cfg.vision.hidden_size * self.r**2, cfg.text.hidden_size
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape  # (B, N, E), N a square
        side, r = round(n**0.5), self.r
        # token (R, C) = concat over (dr, dc), row-major, of patch (r*R + dr, r*C + dc)
        x = x.view(b, side // r, r, side // r, r, e).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, (side // r) ** 2, r * r * e)
        return self.modality_projection.proj(x)  # (B, N/r^2, D)


# --------------------------------------------------------------------------------------------------
# Llama decoder layers (used by the text model and, narrower, by the action expert)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class SelfAttention(nn.Module):
    """Projections only: the attention itself runs jointly over the VLM and expert streams."""

    def __init__(
        self, hidden: int, heads: int, kv_heads: int, head_dim: int, kv_in: int | None = None
    ) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        kv_in = hidden if kv_in is None else kv_in  # cross-attention layers project the VLM's k/v
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(kv_in, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(kv_in, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """x (B, L, W) -> q (B, L, H, Dh), k and v (B, L, KV, Dh)."""
        b, n = x.shape[:2]
        return (
            self.q_proj(x).view(b, n, -1, self.head_dim),
            self.k_proj(x).view(b, n, -1, self.head_dim),
            self.v_proj(x).view(b, n, -1, self.head_dim),
        )

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_proj(x).view(*x.shape[:2], -1, self.head_dim)

    def project_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention: k and v (B, P, KV_in) of the other stream -> (B, P, KV, Dh) each."""
        k2 = self.k_proj(k).view(*k.shape[:2], -1, self.head_dim)
        v2 = self.v_proj(v).view(*v.shape[:2], -1, self.head_dim)
        return k2, v2


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, hidden: int, intermediate: int, kv_in: int | None = None) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(hidden, cfg.rms_norm_eps)
        self.self_attn = SelfAttention(
            hidden, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, kv_in
        )
        self.post_attention_layernorm = RMSNorm(hidden, cfg.rms_norm_eps)
        self.mlp = MLP(hidden, intermediate)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the layer computes in: its weights' (a layer is cast as a whole)."""
        return self.input_layernorm.weight.dtype

    def qkv(self, h: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """h (B, L, W) -> q (B, L, H, Dh) (None in a layer kept only for its keys and values),
        k and v (B, L, KV, Dh)."""
        return self.self_attn.qkv(self.input_layernorm(h).to(self.dtype))

    def query(self, h: torch.Tensor) -> torch.Tensor:
        return self.self_attn.query(self.input_layernorm(h).to(self.dtype))

    def project_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention: the expert's k/v of the VLM's (rotated) keys and values. (B, P, KV, Dh) each."""
        return self.self_attn.project_kv(k.flatten(2).to(self.dtype), v.flatten(2).to(self.dtype))

    def finish(self, h: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """Residual attention output, then the residual MLP. att (B, L, H*Dh)."""
        o = self.self_attn.o_proj(att.to(self.dtype))
        h = (o + h).to(o.dtype)  # the stream takes the layer's dtype, as LeRobot's in-place add does
        return h + self.mlp(self.post_attention_layernorm(h))


class TextModel(nn.Module):
    def __init__(self, cfg: TextConfig, num_layers: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, cfg.hidden_size, cfg.intermediate_size) for _ in range(num_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class SmolVLMModel(nn.Module):
    def __init__(self, cfg: BackboneConfig, num_layers: int) -> None:
        super().__init__()
        self.vision_model = VisionTower(cfg.vision)
        self.connector = Connector(cfg)
        self.text_model = TextModel(cfg.text, num_layers)


class SmolVLM(nn.Module):
    """SmolVLM2 truncated to its first `num_layers` text layers. lm_head is kept for checkpoint fidelity."""

    def __init__(self, cfg: BackboneConfig, num_layers: int) -> None:
        super().__init__()
        self.model = SmolVLMModel(cfg, num_layers)
        self.lm_head = nn.Linear(cfg.text.hidden_size, cfg.text.vocab_size, bias=False)

    def embed_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, H, W) in [-1, 1] -> image tokens (B, T, D), before SmolVLA's sqrt(D) scale."""
        vision = self.model.vision_model
        feats = vision(pixels.to(vision.post_layernorm.weight.dtype))
        return self.model.connector(feats)
