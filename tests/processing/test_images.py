"""Image transforms: LeRobot's resize-with-pad layout, and camera frames as robots give them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smolvla.config import preset
from smolvla.processing import make_pre_post_processors
from smolvla.processing.images import resize_with_pad, to_float_chw


def test_resize_with_pad_keeps_aspect_and_pads_top_left():
    img = torch.rand(1, 3, 480, 640)
    out = resize_with_pad(img, 512, 512, pad_value=0)
    assert out.shape == (1, 3, 512, 512)
    assert (out[:, :, :128] == 0).all()  # 480x640 -> 384x512, 128 rows of padding on top
    expected = torch.nn.functional.interpolate(img, size=(384, 512), mode="bilinear", align_corners=False)
    assert torch.equal(out[:, :, 128:], expected)


def test_resize_with_pad_tall_image_pads_left_and_truncates_size():
    out = resize_with_pad(torch.ones(2, 3, 100, 30), 64, 64, pad_value=-1)
    # ratio 100/64: width int(30 / 1.5625) = 19, so 45 columns of padding on the left
    assert out.shape == (2, 3, 64, 64)
    assert (out[..., :45] == -1).all() and (out[..., 45:] == 1).all()


def test_same_size_is_untouched():
    img = torch.rand(1, 3, 64, 64)
    assert resize_with_pad(img, 64, 64) is img


def test_to_float_chw():
    hwc = torch.randint(0, 256, (2, 8, 10, 3), dtype=torch.uint8)
    out = to_float_chw(hwc)
    assert out.shape == (2, 3, 8, 10) and out.dtype == torch.float32
    assert torch.equal(out, hwc.permute(0, 3, 1, 2).float() / 255)
    chw = torch.rand(3, 8, 10)
    assert to_float_chw(chw) is chw
    with pytest.raises(ValueError, match=r"cam: got dtype torch\.int32"):
        to_float_chw(torch.zeros(3, 4, 4, dtype=torch.int32), "cam")


def test_preprocessor_takes_robot_frames():
    cfg = preset("micro")
    stats = {
        "observation.state": {"mean": [0.0] * 3, "std": [1.0] * 3},
        "action": {"mean": [0.0] * 2, "std": [1.0] * 2},
    }
    pre, _ = make_pre_post_processors(cfg, dataset_stats=stats)
    frame = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    out = pre(
        {"observation.images.camera1": frame, "observation.state": np.zeros(3, np.float32), "task": "go"}
    )
    img = out["observation.images.camera1"]
    assert img.shape == (1, 3, 12, 16) and float(img.max()) <= 1.0
