"""Image transforms shared by the policy and the data pipeline."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_with_pad(img: torch.Tensor, width: int, height: int, pad_value: float = 0.0) -> torch.Tensor:
    """Aspect-preserving bilinear resize into (height, width), padded on the top and left.

    This is LeRobot's layout (the image sits in the bottom-right corner), not openpi's centred pad:
    checkpoints were trained on it, so it must be reproduced exactly. img: (B, C, H, W).
    """
    if img.ndim != 4:
        raise ValueError(f"image: got shape {tuple(img.shape)}, expected (B, C, H, W)")
    cur_h, cur_w = img.shape[2:]
    ratio = max(cur_w / width, cur_h / height)
    new_h, new_w = int(cur_h / ratio), int(cur_w / ratio)
    if (new_h, new_w) != (cur_h, cur_w):
        img = F.interpolate(img, size=(new_h, new_w), mode="bilinear", align_corners=False)
    pad_h, pad_w = max(0, height - new_h), max(0, width - new_w)
    if pad_h or pad_w:
        img = F.pad(img, (pad_w, 0, pad_h, 0), value=pad_value)
    return img
