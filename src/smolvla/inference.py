"""Inference preparation: fused projections, bf16 or int8 weights, unused weights dropped.

`prepare(policy, mode)` turns a policy into an inference-only one, block by block (a vision layer, a
decoder layer), so that memory never holds more than one block twice:

- every mode: q/k/v of each self-attention projected by one GEMM, gate/up of each MLP by one GEMM;
  lm_head, the final text norm, the VLM layers after the last one the expert reads and that layer's
  query, output projection and MLP are dropped (they never influence the actions);
- "fp32": nothing else; the actions equal the unprepared policy's up to float summation order;
- "bf16": backbone and expert in bf16 (the five small projections stay fp32, as `set_precision`);
- "int8": every linear layer of the vision tower, connector, VLM text layers and action expert holds
  int8 weights (per output channel) and quantizes its fp32 input per call (VNNI GEMMs through torch's
  dynamic quantized linear: about 2x bf16 and 4x fp32 per core here, even at the expert's 50 rows);
  norms, attention and the five small projections run in fp32.

`load_prepared(...)` builds the same thing from a checkpoint without materializing the fp32 model:
tensors are read one block at a time and converted straight away, and the token embedding table stays
in the file, memory-mapped: only the rows of the tokens actually seen are paged in.

A prepared policy cannot be trained or saved (its projections are fused or quantized); prepare a copy.
"""

from __future__ import annotations

import json
import mmap
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from smolvla.checkpoint import CheckpointError
from smolvla.errors import SmolVLAError
from smolvla.hardware import has_vnni, int8_supported, native_bf16
from smolvla.model.backbone import MLP, DecoderLayer, SelfAttention, VisionAttention

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


def _fuse_block(block: nn.Module, dtype: torch.dtype) -> None:
    for m in list(block.modules()):
        if isinstance(m, SelfAttention):
            m.compute_dtype = dtype
        if isinstance(m, VisionAttention) and m.qkv is None:
            m.qkv = fuse_linears([m.q_proj, m.k_proj, m.v_proj])
            m.q_proj = m.k_proj = m.v_proj = None
        elif isinstance(m, SelfAttention) and m.qkv is None and m.kv is None:
            if m.q_proj is None:  # a layer kept for its keys and values only
                m.kv = fuse_linears([m.k_proj, m.v_proj])
                m.k_proj = m.v_proj = None
            elif not m.cross:  # self-attention: one input for all three
                m.qkv = fuse_linears([m.q_proj, m.k_proj, m.v_proj])
                m.q_proj = m.k_proj = m.v_proj = None
            # cross-attention (k/v read the VLM's keys and values): projected once per chunk, unfused
        elif isinstance(m, MLP) and m.gate_up is None:
            m.gate_up = fuse_linears([m.gate_proj, m.up_proj])
            m.gate_proj = m.up_proj = None


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
    _drop_unused(policy)
    for block, dtype, q in _blocks(policy, mode):
        with torch.no_grad():
            block.to(dtype)
        _fuse_block(block, dtype)
        if q:
            _quantize_block(block)
    _finish(policy, mode)
    return mode


# --------------------------------------------------------------------------------------------------
# Loading a checkpoint straight into a prepared policy

_ST_DTYPES = {
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F64": torch.float64,
    "I64": torch.int64,
}


class SafetensorsReader:
    """Reads single tensors of a safetensors file with plain reads (no mapping of the whole file, so
    the process's resident memory holds only what was converted), and maps one tensor on request."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with self.path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        self.base = 8 + n
        self.entries = header
        self._maps: list[mmap.mmap] = []

    def keys(self) -> list[str]:
        return list(self.entries)

    def _entry(self, key: str) -> tuple[torch.dtype, list[int], int, int]:
        e = self.entries[key]
        if e["dtype"] not in _ST_DTYPES:
            raise CheckpointError(
                f"{self.path}: {key} has dtype {e['dtype']}, expected one of {list(_ST_DTYPES)}"
            )
        start, end = e["data_offsets"]
        return _ST_DTYPES[e["dtype"]], e["shape"], self.base + start, end - start

    def read(self, key: str) -> torch.Tensor:
        dtype, shape, offset, size = self._entry(key)
        buf = bytearray(size)
        with self.path.open("rb") as f:
            f.seek(offset)
            f.readinto(buf)
        return torch.frombuffer(buf, dtype=dtype).reshape(shape) if size else torch.empty(shape, dtype=dtype)

    def mapped(self, key: str) -> torch.Tensor:
        """The tensor backed by a private mapping of the file: pages are read when first touched."""
        dtype, shape, offset, size = self._entry(key)
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        with self.path.open("rb") as f:
            mm = mmap.mmap(f.fileno(), offset - start + size, access=mmap.ACCESS_COPY, offset=start)
        self._maps.append(mm)  # the tensor borrows the mapping's memory: keep it alive with the reader
        return torch.frombuffer(mm, dtype=dtype, offset=offset - start, count=size // dtype.itemsize).reshape(
            shape
        )


class MappedEmbedding(nn.Module):
    """An embedding table left in the checkpoint file (memory-mapped) and cast per lookup.

    Why this is safe: a lookup reads exactly the rows of the given ids, whatever the tokenizer emits,
    so every row stays reachable; only the ones used are ever resident (a prompt touches a few dozen
    of the 49 280 rows)."""

    def __init__(self, table: torch.Tensor, dtype: torch.dtype, reader: SafetensorsReader) -> None:
        super().__init__()
        self.table, self.dtype, self.reader = table, dtype, reader
        self.num_embeddings, self.embedding_dim = table.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.table).to(self.dtype)


def _materialize(block: nn.Module, prefix: str, reader: SafetensorsReader, dtype: torch.dtype) -> None:
    for mod_name, mod in block.named_modules():
        for name, p in list(mod._parameters.items()):
            if p is None:
                continue
            key = f"{prefix}{mod_name + '.' if mod_name else ''}{name}"
            t = reader.read(key)
            if tuple(t.shape) != tuple(p.shape):
                raise CheckpointError(
                    f"{reader.path}: {key} has shape {tuple(t.shape)}, the model expects {tuple(p.shape)}"
                )
            if not torch.isfinite(t).all():
                raise CheckpointError(f"{reader.path}: {key} is not finite")
            mod._parameters[name] = nn.Parameter(t.to(dtype), requires_grad=False)


def load_prepared(build: Callable[[], nn.Module], path: Path, mode: str = "auto") -> nn.Module:
    """A policy prepared for inference from the checkpoint file `path`, never holding the fp32 model.

    `build()` constructs the (unloaded) policy; it is called on the meta device, so it allocates
    nothing. Every key of the file must be used by the model except the dropped parts', and every
    parameter must be in the file."""
    mode = resolve_mode(mode)
    with torch.device("meta"):
        policy = build()
    names = {id(mod): name for name, mod in policy.named_modules()}
    reader = SafetensorsReader(path)
    expected = set(policy.state_dict())
    missing = sorted(expected - set(reader.keys()))
    if missing:
        raise CheckpointError(
            f"{path}: state dict does not match the model ({len(missing)} missing: {missing[:8]})"
        )
    # prune on meta (free), then read what is left block by block
    _drop_unused(policy)
    used = set(policy.state_dict())
    unexpected = sorted(set(reader.keys()) - expected)
    if unexpected:
        raise CheckpointError(f"{path}: unexpected keys {unexpected[:8]} ({len(unexpected)})")
    embed = policy.model.vlm_with_expert.vlm.model.text_model
    for block, dtype, q in _blocks(policy, mode):
        prefix = names[id(block)] + "."
        if block is embed.embed_tokens:
            key = prefix + "weight"
            table = reader.mapped(key)
            embed.embed_tokens = MappedEmbedding(table, dtype, reader)
            used.discard(key)
            continue
        _materialize(block, prefix, reader, dtype)
        used -= {prefix + k for k in block.state_dict()}
        _fuse_block(block, dtype)
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
