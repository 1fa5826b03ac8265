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

from smolvla.data.errors import DatasetError


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
                raise DatasetError(f"AugmentConfig.{name}: got {v!r}, expected a number in [0, 1)")
        if not 0 <= self.hue <= 0.5:
            raise DatasetError(f"AugmentConfig.hue: got {self.hue!r}, expected a number in [0, 0.5]")
        if not 0 < self.crop_scale <= 1:
            raise DatasetError(
                f"AugmentConfig.crop_scale: got {self.crop_scale!r}, expected a number in (0, 1]"
            )
        if not isinstance(self.max_shift, int) or self.max_shift < 0:
            raise DatasetError(f"AugmentConfig.max_shift: got {self.max_shift!r}, expected an integer >= 0")


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
    """[..., 3, H, W] HSV (hue as a fraction of a turn) -> RGB, all three channels in one expression."""
    h, s, v = x.unsqueeze(-3).unbind(-4)  # each [..., 1, H, W]
    # channel c = v - v*s*clamp(min(k, 4 - k), 0, 1) with k = (n_c + 6h) mod 6 and n = (5, 3, 1) for RGB
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(3, 1, 1)
    k = (n + h * 6) % 6
    return v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)


class ImageAugment:
    """Callable augmentation (see the module docstring); the identity when the config is disabled."""

    def __init__(self, config: AugmentConfig | None = None):
        self.config = config if config is not None else AugmentConfig(enabled=True)

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """img [..., 3, H, W]: one draw shared by every leading index (the frames of one item)."""
        if not self.config.enabled:
            return img
        self._check(img, "")
        return self.batch(img.unsqueeze(0), generator)[0]

    def batch(self, imgs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """imgs [B, ..., 3, H, W]: an independent draw per item, all items transformed at once.

        Vectorized over the batch because a per-item Python loop costs a training step ~8 % at 64 px.
        """
        c = self.config
        if not c.enabled:
            return imgs
        self._check(imgs, "B, ")
        b, (h, w) = imgs.shape[0], imgs.shape[-2:]
        x = imgs.reshape(b, -1, 3, h, w)  # (B, T, 3, H, W)
        t = x.shape[1]
        g = generator

        def uniform(lo: float, hi: float) -> torch.Tensor:  # (B, 1, 1, 1, 1), one value per item
            return (lo + (hi - lo) * torch.rand(b, generator=g)).to(x.dtype).view(b, 1, 1, 1, 1)

        if c.crop_scale < 1:
            # crop-then-resize is an affine map of the sampling grid: one grid_sample for the batch
            s = c.crop_scale + (1 - c.crop_scale) * torch.rand(b, generator=g)
            ch, cw = (h * s).round().clamp(min=1), (w * s).round().clamp(min=1)
            top = (torch.rand(b, generator=g) * (h - ch + 1)).floor()
            left = (torch.rand(b, generator=g) * (w - cw + 1)).floor()
            theta = torch.zeros(b, 2, 3)
            theta[:, 0, 0], theta[:, 0, 2] = cw / w, (2 * left + cw) / w - 1
            theta[:, 1, 1], theta[:, 1, 2] = ch / h, (2 * top + ch) / h - 1
            grid = F.affine_grid(theta.to(x.dtype), [b, 3, h, w], align_corners=False)  # (B, H, W, 2)
            x = F.grid_sample(
                x.reshape(b * t, 3, h, w),
                grid.repeat_interleave(t, 0),
                mode="bilinear",
                padding_mode="border",
                align_corners=False,
            ).reshape(b, t, 3, h, w)
        if c.max_shift > 0:
            m = c.max_shift
            dy = torch.randint(0, 2 * m + 1, (b,), generator=g)
            dx = torch.randint(0, 2 * m + 1, (b,), generator=g)
            padded = F.pad(x.reshape(b * t, 3, h, w), (m, m, m, m), mode="replicate")
            padded = padded.reshape(b, t, 3, h + 2 * m, w + 2 * m)
            rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
            cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
            x = padded[torch.arange(b)[:, None, None], :, :, rows, cols].permute(0, 3, 4, 1, 2)
        if c.brightness > 0:
            x = (x * uniform(1 - c.brightness, 1 + c.brightness)).clamp(0, 1)
        if c.contrast > 0:
            mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)  # per frame
            x = ((x - mean) * uniform(1 - c.contrast, 1 + c.contrast) + mean).clamp(0, 1)
        if c.saturation > 0:
            gray = _gray(x)
            x = ((x - gray) * uniform(1 - c.saturation, 1 + c.saturation) + gray).clamp(0, 1)
        if c.hue > 0:
            shift = uniform(-c.hue, c.hue)[:, :, 0]  # (B, 1, 1, 1)
            hsv = rgb_to_hsv(x)
            hsv = torch.stack([(hsv[:, :, 0] + shift) % 1.0, hsv[:, :, 1], hsv[:, :, 2]], 2)
            x = hsv_to_rgb(hsv).clamp(0, 1)
        return x.reshape(imgs.shape).contiguous()

    @staticmethod
    def _check(img: torch.Tensor, lead: str) -> None:
        need = 4 if lead else 3
        if img.ndim < need or img.shape[-3] != 3 or not img.is_floating_point():
            raise DatasetError(
                f"ImageAugment: got {img.dtype} {tuple(img.shape)}, expected float [{lead}..., 3, H, W]"
            )

    def __repr__(self) -> str:
        return f"ImageAugment({self.config})"
