"""What the machine can do fast: decisions that depend on the CPU or GPU, in one place."""

from __future__ import annotations

import functools
from pathlib import Path

import torch


def native_bf16(device: torch.device | str) -> bool:
    """True where bf16 matmuls run in hardware: CUDA GPUs with bf16, CPUs with AVX-512 BF16 or AMX.

    Elsewhere torch emulates bf16 and it is slower than fp32, so 'auto' choices keep fp32 there.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        # private probes, present since torch 2.1; absent -> assume no native bf16
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def int8_supported() -> bool:
    """Whether torch's dynamic int8 linear has a backend here (fbgemm / x86 on x86 CPUs)."""
    return any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm"))


@functools.cache
def has_vnni() -> bool:
    """Whether the CPU has VNNI int8 dot products (int32 accumulation, no saturation)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags
