"""What the machine can do fast: decisions that depend on the CPU or GPU, in one place."""

from __future__ import annotations

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
