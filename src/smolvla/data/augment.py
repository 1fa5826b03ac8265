"""Camera-image augmentation in plain torch: color jitter, small random crops, small shifts.

    aug = ImageAugment(AugmentConfig(enabled=True))
    ds = LeRobotDataset(root, image_transforms=aug)   # per item, in the DataLoader workers
    out = aug(img, generator=torch.Generator().manual_seed(0))   # reproducible

Images are float [..., 3, H, W] in [0, 1]; every leading index (the frames of one item) gets the same
draw, so a window of frames stays consistent. The steps, in this order, each with a random magnitude
drawn uniformly (the identity is always inside the range):
1. crop: a window keeping a fraction s in [crop_scale, 1] of each side, resized back (bilinear);
2. shift: the image moves by up to `max_shift` pixels in each direction, edges replicated (DrQ's shift);
3. brightness x*f, contrast (x - mean)*f + mean, saturation (x - gray)*f + gray, with f in [1-a, 1+a];
4. hue: rotated by up to `hue` of a turn in HSV.
Values are clamped to [0, 1] after each color step, as torchvision's ColorJitter does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = False
    brightness: float = 0.2  # factor in [1 - brightness, 1 + brightness]
    contrast: float = 0.2
    saturation: float = 0.3
    hue: float = 0.03  # fraction of a turn, at most 0.5
    crop_scale: float = 0.9  # side fraction kept by the random crop; 1 disables it
    max_shift: int = 4  # pixels; 0 disables the shift

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"AugmentConfig.{name}: got {v!r}, expected a number in [0, 1)")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"AugmentConfig.hue: got {self.hue!r}, expected a number in [0, 0.5]")
        if not 0 < self.crop_scale <= 1:
            raise ValueError(
                f"AugmentConfig.crop_scale: got {self.crop_scale!r}, expected a number in (0, 1]"
            )
        if not isinstance(self.max_shift, int) or self.max_shift < 0:
            raise ValueError(f"AugmentConfig.max_shift: got {self.max_shift!r}, expected an integer >= 0")


_GRAY = (0.299, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(-3)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] RGB in [0, 1] -> HSV, hue as a fraction of a turn in [0, 1)."""
    r, g, b = x.unbind(-3)
    maxc, _ = x.max(-3)
    minc, _ = x.min(-3)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(
        maxc == r,
        ((g - b) / safe) % 6,
        torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h))
    s = torch.where(
        maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc)
    )
    return torch.stack([h, s, maxc], -3)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(-3)
    h6 = (h % 1.0) * 6
    i = torch.floor(h6)
    f = h6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    # (r, g, b) for each of the six sectors of the hue circle
    table = torch.stack(
        [
            torch.stack([v, t, p], -3),
            torch.stack([q, v, p], -3),
            torch.stack([p, v, t], -3),
            torch.stack([p, q, v], -3),
            torch.stack([t, p, v], -3),
            torch.stack([v, p, q], -3),
        ],
        0,
    )  # [6, ..., 3, H, W]
    idx = i.unsqueeze(-3).expand_as(table[0]).unsqueeze(0)
    return table.gather(0, idx).squeeze(0)


def _uniform(lo: float, hi: float, g: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


class ImageAugment:
    """Callable augmentation (see the module docstring); the identity when the config is disabled."""

    def __init__(self, config: AugmentConfig | None = None):
        self.config = config if config is not None else AugmentConfig(enabled=True)

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        c = self.config
        if not c.enabled:
            return img
        if img.ndim < 3 or img.shape[-3] != 3 or not img.is_floating_point():
            raise ValueError(
                f"ImageAugment: got {img.dtype} {tuple(img.shape)}, expected float [..., 3, H, W]"
            )
        lead, (h, w) = img.shape[:-3], img.shape[-2:]
        x = img.reshape(-1, 3, h, w)
        g = generator
        if c.crop_scale < 1:
            s = _uniform(c.crop_scale, 1.0, g)
            ch, cw = max(1, round(h * s)), max(1, round(w * s))
            top = int(torch.randint(0, h - ch + 1, (), generator=g))
            left = int(torch.randint(0, w - cw + 1, (), generator=g))
            if (ch, cw) != (h, w):
                x = x[..., top : top + ch, left : left + cw]
                x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        if c.max_shift > 0:
            m = c.max_shift
            dy = int(torch.randint(0, 2 * m + 1, (), generator=g))
            dx = int(torch.randint(0, 2 * m + 1, (), generator=g))
            x = F.pad(x, (m, m, m, m), mode="replicate")[..., dy : dy + h, dx : dx + w]
        if c.brightness > 0:
            x = (x * _uniform(1 - c.brightness, 1 + c.brightness, g)).clamp(0, 1)
        if c.contrast > 0:
            mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
            x = ((x - mean) * _uniform(1 - c.contrast, 1 + c.contrast, g) + mean).clamp(0, 1)
        if c.saturation > 0:
            gray = _gray(x)
            x = ((x - gray) * _uniform(1 - c.saturation, 1 + c.saturation, g) + gray).clamp(0, 1)
        if c.hue > 0:
            shift = _uniform(-c.hue, c.hue, g)
            hsv = rgb_to_hsv(x)
            hsv = torch.stack([(hsv[:, 0] + shift) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
            x = hsv_to_rgb(hsv).clamp(0, 1)
        return x.reshape(*lead, 3, h, w).contiguous()

    def __repr__(self) -> str:
        return f"ImageAugment({self.config})"
