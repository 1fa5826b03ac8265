"""Image transforms shared by the policy and the data pipeline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smolvla.errors import SmolVLAError


class ProcessorError(SmolVLAError, ValueError):
    """A processor file is malformed, names an unknown step, or the data does not fit the pipeline."""


def resize_with_pad(img: torch.Tensor, width: int, height: int, pad_value: float = 0.0) -> torch.Tensor:
    """Aspect-preserving bilinear resize into (height, width), padded on the top and left.

    This is LeRobot's layout (the image sits in the bottom-right corner), not openpi's centred pad:
    checkpoints were trained on it, so it must be reproduced exactly. img: (B, C, H, W).
    """
    if img.ndim != 4:
        raise ProcessorError(f"image: got shape {tuple(img.shape)}, expected (B, C, H, W)")
    cur_h, cur_w = img.shape[2:]
    if min(cur_h, cur_w, width, height) < 1:
        raise ProcessorError(
            f"image: got {cur_h} x {cur_w} pixels to resize into {height} x {width}, expected sizes >= 1"
        )
    ratio = max(cur_w / width, cur_h / height)
    new_h, new_w = int(cur_h / ratio), int(cur_w / ratio)
    if new_h < 1 or new_w < 1:  # torch would fail inside interpolate on the empty target
        raise ProcessorError(
            f"image: got {cur_h} x {cur_w} pixels (height x width), whose aspect ratio leaves {new_h} x "
            f"{new_w} when resized into {height} x {width}; expected a camera frame, not a strip"
        )
    if (new_h, new_w) != (cur_h, cur_w):
        img = F.interpolate(img, size=(new_h, new_w), mode="bilinear", align_corners=False)
    pad_h, pad_w = max(0, height - new_h), max(0, width - new_w)
    if pad_h or pad_w:
        img = F.pad(img, (pad_w, 0, pad_h, 0), value=pad_value)
    return img


def to_float_chw(img: torch.Tensor, key: str = "image") -> torch.Tensor:
    """A camera frame as the policy takes it: float in [0, 1], channels first.

    Accepts what robots and simulators produce: uint8 (divided by 255) and channels-last (H, W, 3)
    layouts, batched or not. Float channels-first input passes unchanged.
    """
    if img.ndim not in (3, 4):
        raise ProcessorError(
            f"{key}: got shape {tuple(img.shape)}, expected [(B,) 3, H, W] or [(B,) H, W, 3]"
        )
    if img.shape[-1] == 3 and img.shape[-3] != 3:  # channels last
        img = img.movedim(-1, -3)
    if img.shape[-3] != 3 or img.shape[-2] < 1 or img.shape[-1] < 1:
        raise ProcessorError(
            f"{key}: got shape {tuple(img.shape)}, expected [(B,) 3, H, W] or [(B,) H, W, 3] with H, W >= 1"
        )
    if img.dtype == torch.uint8:
        return img.float() / 255.0
    if not img.is_floating_point():
        raise ProcessorError(f"{key}: got dtype {img.dtype}, expected uint8 or float in [0, 1]")
    return img
