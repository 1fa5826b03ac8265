"""Inference preparation: fused projections, bf16 or int8 weights, unused weights dropped.

`prepare(policy, mode)` turns a policy into an inference-only one, block by block (a vision layer, a
decoder layer), so that memory never holds more than one block twice:

- every mode: modules of the plain network (smolvla.model.backbone) are swapped for these faster ones
  that compute the same: `FusedVisionAttention` and `FusedSelfAttention` (q/k/v by one GEMM),
  `KVOnlyAttention` (the last VLM layer the expert reads: only its keys and values are used),
  `FusedMLP` (gate/up by one GEMM); lm_head, the final text norm, the VLM layers after the last one
  the expert reads and that layer's query, output projection and MLP are dropped (they never
  influence the actions);
- "fp32": nothing else; the actions equal the unprepared policy's up to float summation order;
- "bf16": backbone and expert in bf16 (the five small projections stay fp32, as `set_precision`);
- "int8": every linear layer of the vision tower, connector, VLM text layers and action expert becomes
  an `Int8Linear`: int8 weights (per output channel), its fp32 input quantized per call (VNNI GEMMs
  through torch's dynamic quantized linear: about 2x bf16 and 4x fp32 per core here, even at the
  expert's 50 rows);
  norms, attention and the five small projections run in fp32.

`load_prepared(...)` builds the same thing from a checkpoint without materializing the fp32 model:
tensors are read one block at a time (smolvla.checkpoint.SafetensorsFile) and converted straight away,
and the token embedding table stays in the file, memory-mapped: only the rows of the tokens actually
seen are paged in.

A prepared policy cannot be trained or saved (its projections are fused or quantized); prepare a copy.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from smolvla.checkpoint import CheckpointError, SafetensorsFile, check_keys, check_tensor
from smolvla.errors import SmolVLAError
from smolvla.hardware import has_vnni, int8_supported, native_bf16
from smolvla.model.backbone import MLP, DecoderLayer, SelfAttention, VisionAttention, attention

MODES = ("fp32", "bf16", "int8")


class InferenceModeError(SmolVLAError, ValueError):
    """An inference mode that does not exist or that this CPU cannot run."""


def resolve_mode(mode: str) -> str:
    """ "auto" becomes the fastest mode this CPU supports; others are checked."""
    if mode == "auto":
        if int8_supported() and native_bf16("cpu"):
            return "int8"
        return "bf16" if native_bf16("cpu") else "fp32"
    if mode not in MODES:
        raise InferenceModeError(f"inference mode: got {mode!r}, expected 'auto' or one of {list(MODES)}")
    if mode == "int8" and not int8_supported():
        raise InferenceModeError(
            "inference mode 'int8': this torch build has no x86/fbgemm quantized engine "
            f"(supported: {torch.backends.quantized.supported_engines}); use 'bf16' or 'fp32'"
        )
    return mode


# --------------------------------------------------------------------------------------------------
# Building blocks


class Int8Linear(nn.Module):
    """y = x W^T + b with W int8 per output channel; x (fp32) quantized per call to uint8 over its
    range. With VNNI the full 8-bit activation range is used; without it, 7 bits (reduce_range), as
    the AVX2 kernels' int16 pair sums would otherwise saturate."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
        zero = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # torch flags its quantized tensors as deprecated; they still run
            warnings.simplefilter("ignore")
            qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            bias = None if linear.bias is None else linear.bias.detach().float()
            self.packed = torch.ops.quantized.linear_prepack(qw, bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.reduce_range = not has_vnni()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x.float(), self.packed, self.reduce_range)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def fuse_linears(parts: list[nn.Linear]) -> nn.Linear:
    """One Linear whose output is the parts' outputs concatenated (same input)."""
    w = torch.cat([p.weight.detach() for p in parts], dim=0)
    has_bias = parts[0].bias is not None
    fused = nn.Linear(w.shape[1], w.shape[0], bias=has_bias, device="meta")
    fused.weight = nn.Parameter(w, requires_grad=False)
    if has_bias:
        fused.bias = nn.Parameter(torch.cat([p.bias.detach() for p in parts]), requires_grad=False)
    return fused


class FusedVisionAttention(nn.Module):
    """VisionAttention with q|k|v as one GEMM."""

    def __init__(self, src: VisionAttention) -> None:
        super().__init__()
        self.heads = src.heads
        self.qkv_proj = fuse_linears([src.q_proj, src.k_proj, src.v_proj])
        self.out_proj = src.out_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv_proj(x).view(b, n, 3, self.heads, -1).unbind(2)  # (B, N, H, Dh) each
        return self.out_proj(attention(q, k, v, None))


class FusedSelfAttention(nn.Module):
    """SelfAttention (one input for q, k and v) with q|k|v as one GEMM."""

    def __init__(self, src: SelfAttention) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = src.heads, src.kv_heads, src.head_dim
        self.qkv_proj = fuse_linears([src.q_proj, src.k_proj, src.v_proj])
        self.o_proj = src.o_proj

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n = x.shape[:2]
        kv = self.kv_heads * self.head_dim
        q, k, v = self.qkv_proj(x).split([self.heads * self.head_dim, kv, kv], dim=-1)
        return (
            q.view(b, n, -1, self.head_dim),
            k.view(b, n, -1, self.head_dim),
            v.view(b, n, -1, self.head_dim),
        )


class KVOnlyAttention(nn.Module):
    """The last VLM layer the expert reads: its queries and output are never used, so only k|v, by
    one GEMM."""

    def __init__(self, src: SelfAttention) -> None:
        super().__init__()
        self.head_dim = src.head_dim
        self.kv_proj = fuse_linears([src.k_proj, src.v_proj])

    def qkv(self, x: torch.Tensor) -> tuple[None, torch.Tensor, torch.Tensor]:
        b, n = x.shape[:2]
        k, v = self.kv_proj(x).view(b, n, 2, -1, self.head_dim).unbind(2)
        return None, k, v


class FusedMLP(nn.Module):
    """MLP with gate|up as one GEMM."""

    def __init__(self, src: MLP) -> None:
        super().__init__()
        self.gate_up_proj = fuse_linears([src.gate_proj, src.up_proj])
        self.down_proj = src.down_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


def _fuse_block(block: nn.Module, cross: set[int]) -> None:
    """Swaps the block's plain modules for fused ones. cross: ids of the expert's cross-attention
    modules, left as they are (their k/v read the VLM's keys and values, projected once per chunk)."""
    for parent in list(block.modules()):
        for name, m in list(parent.named_children()):
            if isinstance(m, VisionAttention):
                setattr(parent, name, FusedVisionAttention(m))
            elif isinstance(m, SelfAttention) and id(m) not in cross:
                setattr(parent, name, KVOnlyAttention(m) if m.q_proj is None else FusedSelfAttention(m))
            elif isinstance(m, MLP):
                setattr(parent, name, FusedMLP(m))


def _quantize_block(block: nn.Module) -> None:
    for m in list(block.modules()):
        for name, child in list(m.named_children()):
            if type(child) is nn.Linear:
                setattr(m, name, Int8Linear(child))


def _prune_kv_only(layer: DecoderLayer) -> None:
    """The last VLM layer the expert reads: only its keys and values are used."""
    a = layer.self_attn
    a.q_proj = a.o_proj = None
    layer.mlp = layer.post_attention_layernorm = None


def _cross_attention(policy: nn.Module) -> set[int]:
    vwe = policy.model.vlm_with_expert
    layers = [vwe.expert_layer(i) for i, kind in enumerate(vwe.kinds) if kind == "ca"]
    return {id(layer.self_attn) for layer in layers if layer is not None}


def _blocks(policy: nn.Module, mode: str) -> list[tuple[nn.Module, torch.dtype, bool]]:
    """(block, dtype, int8) in the order they are prepared; every parameter is in exactly one block."""
    m = policy.model
    vwe = m.vlm_with_expert
    vlm = vwe.vlm.model
    q = mode == "int8"
    # int8 blocks compute in fp32 around their int8 GEMMs (the quantized linear takes fp32 input)
    back = torch.bfloat16 if mode == "bf16" else torch.float32
    out: list[tuple[nn.Module, torch.dtype, bool]] = [(vlm.vision_model.embeddings, back, False)]
    out += [(layer, back, q) for layer in vlm.vision_model.encoder.layers]
    out += [(vlm.vision_model.post_layernorm, back, False), (vlm.connector, back, q)]
    out += [(vlm.text_model.embed_tokens, back, False)]
    out += [(layer, back, q) for layer in vlm.text_model.layers[: vwe.last_used + 1]]
    out += [(layer, back, q) for layer in vwe.lm_expert.layers] + [(vwe.lm_expert.norm, back, False)]
    for name in (
        "state_proj",
        "action_in_proj",
        "action_out_proj",
        "action_time_mlp_in",
        "action_time_mlp_out",
    ):
        out.append((getattr(m, name), torch.float32, False))  # tiny, and fp32 in LeRobot's checkpoints
    return out


def _drop_unused(policy: nn.Module) -> None:
    vwe = policy.model.vlm_with_expert
    text = vwe.vlm.model.text_model
    vwe.vlm.lm_head = None
    text.norm = None
    del text.layers[vwe.last_used + 1 :]
    _prune_kv_only(text.layers[vwe.last_used])


def _finish(policy: nn.Module, mode: str) -> None:
    policy.requires_grad_(False)
    policy.eval()
    policy.inference_mode = mode


def prepare(policy: nn.Module, mode: str = "auto") -> str:
    """Prepares an in-memory policy for inference (see the module doc). Returns the mode applied."""
    mode = resolve_mode(mode)
    if getattr(policy, "inference_mode", None) is not None:
        raise InferenceModeError(f"inference mode: the policy is already prepared ({policy.inference_mode})")
    cross = _cross_attention(policy)
    _drop_unused(policy)
    for block, dtype, q in _blocks(policy, mode):
        with torch.no_grad():
            block.to(dtype)
        _fuse_block(block, cross)
        if q:
            _quantize_block(block)
    _finish(policy, mode)
    return mode


# --------------------------------------------------------------------------------------------------
# Loading a checkpoint straight into a prepared policy


class MappedEmbedding(nn.Module):
    """An embedding table left in the checkpoint file (memory-mapped) and cast per lookup.

    Why this is safe: a lookup reads exactly the rows of the given ids, whatever the tokenizer emits,
    so every row stays reachable; only the ones used are ever resident (a prompt touches a few dozen
    of the 49 280 rows)."""

    def __init__(self, table: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.table, self.dtype = table, dtype  # table: a view of the file's mapping (SafetensorsFile)
        self.num_embeddings, self.embedding_dim = table.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.table).to(self.dtype)


def _materialize(block: nn.Module, prefix: str, file: SafetensorsFile, dtype: torch.dtype) -> None:
    params = {
        f"{prefix}{mod_name + '.' if mod_name else ''}{name}": (mod, name, p)
        for mod_name, mod in block.named_modules()
        for name, p in mod._parameters.items()
        if p is not None
    }
    tensors = file.read(params)  # views of the file, released when this block is converted
    for key, (mod, name, p) in params.items():
        t = tensors.pop(key)
        check_tensor(t, p, key, str(file.path))
        # copy=True: a parameter never shares memory with the file's mapping, even in its own dtype
        mod._parameters[name] = nn.Parameter(t.to(dtype, copy=True), requires_grad=False)


def load_prepared(build: Callable[[], nn.Module], path: Path, mode: str = "auto") -> nn.Module:
    """A policy prepared for inference from the checkpoint file `path`, never holding the fp32 model.

    `build()` constructs the (unloaded) policy; it is called on the meta device, so it allocates
    nothing. The file's keys must be exactly the model's (the same check as a plain load)."""
    mode = resolve_mode(mode)
    with torch.device("meta"):
        policy = build()
    names = {id(mod): name for name, mod in policy.named_modules()}
    file = SafetensorsFile(path)
    check_keys(policy.state_dict(), file.keys(), str(path))
    cross = _cross_attention(policy)
    _drop_unused(policy)  # on meta (free); what is left is read block by block
    used = set(policy.state_dict())
    embed = policy.model.vlm_with_expert.vlm.model.text_model
    for block, dtype, q in _blocks(policy, mode):
        prefix = names[id(block)] + "."
        if block is embed.embed_tokens:
            key = prefix + "weight"
            embed.embed_tokens = MappedEmbedding(file.read([key])[key], dtype)
            used.discard(key)
            continue
        _materialize(block, prefix, file, dtype)
        used -= {prefix + k for k in block.state_dict()}
        _fuse_block(block, cross)
        if q:
            _quantize_block(block)
    if used:
        raise CheckpointError(f"{path}: parameters not loaded: {sorted(used)[:8]}")
    _finish(policy, mode)
    return policy


def param_bytes(module: nn.Module) -> int:
    """Bytes of the module's weights, int8 packed ones included (mapped tables excluded)."""
    total = sum(p.numel() * p.element_size() for p in module.parameters())
    for m in module.modules():
        if isinstance(m, Int8Linear):
            total += m.in_features * m.out_features + 4 * m.out_features
    return total
