"""Image augmentation: off by default, reproducible from a generator, in range, consistent over a window."""

from __future__ import annotations

import pytest
import torch

from smolvla.data import AugmentConfig, ImageAugment
from smolvla.data.augment import hsv_to_rgb, rgb_to_hsv


def test_disabled_by_default_is_the_identity() -> None:
    img = torch.rand(3, 8, 8)
    assert AugmentConfig().enabled is False
    assert ImageAugment(AugmentConfig()).__call__(img) is img


def test_deterministic_given_a_generator_and_in_range() -> None:
    aug = ImageAugment(AugmentConfig(enabled=True))
    img = torch.rand(3, 24, 32)
    a = aug(img, generator=torch.Generator().manual_seed(7))
    b = aug(img, generator=torch.Generator().manual_seed(7))
    c = aug(img, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == img.shape and a.dtype == img.dtype
    assert a.min() >= 0 and a.max() <= 1


def test_a_window_of_frames_gets_one_draw() -> None:
    frame = torch.rand(3, 16, 16)
    out = ImageAugment(AugmentConfig(enabled=True))(frame.expand(4, 3, 16, 16), generator=torch.Generator())
    assert out.shape == (4, 3, 16, 16)
    assert all(torch.equal(out[0], out[i]) for i in range(4))


def test_each_step_alone() -> None:
    img = torch.rand(3, 16, 16)
    g = torch.Generator().manual_seed(0)
    none = AugmentConfig(
        enabled=True, brightness=0, contrast=0, saturation=0, hue=0, crop_scale=1, max_shift=0
    )
    assert torch.equal(ImageAugment(none)(img, g), img)
    # A shift moves content by whole pixels: the shifted image is a window of the edge-padded one.
    shifted = ImageAugment(
        AugmentConfig(enabled=True, brightness=0, contrast=0, saturation=0, hue=0, crop_scale=1, max_shift=2)
    )(img, g)
    padded = torch.nn.functional.pad(img[None], (2, 2, 2, 2), mode="replicate")[0]
    assert any(torch.equal(shifted, padded[:, y : y + 16, x : x + 16]) for y in range(5) for x in range(5))
    bright = ImageAugment(
        AugmentConfig(
            enabled=True, brightness=0.5, contrast=0, saturation=0, hue=0, crop_scale=1, max_shift=0
        )
    )(img * 0.5, g)
    ratio = bright / (img * 0.5)
    assert torch.allclose(ratio, ratio.flatten()[0]) and 0.5 <= ratio.flatten()[0] <= 1.5


def test_hsv_round_trip() -> None:
    x = torch.rand(2, 3, 5, 7)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kwargs", [{"brightness": 1.5}, {"hue": 0.7}, {"crop_scale": 0.0}, {"max_shift": -1}, {"contrast": -0.1}]
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AugmentConfig(**kwargs)


def test_rejects_non_images() -> None:
    with pytest.raises(ValueError, match="float"):
        ImageAugment()(torch.zeros(3, 4, 4, dtype=torch.uint8))
