"""The benchmark harness (smolvla.apps.bench) on the micro preset: fields, consistency, clear errors."""

from __future__ import annotations

import pytest
import torch

from smolvla.apps import bench


def test_inference_case_reports_the_stages_of_predict_action_chunk(tmp_path):
    bench.write_checkpoint("micro", 2, tmp_path / "ckpt")
    rec = bench.inference_case("micro", tmp_path / "ckpt", "int8", 2, 1, 7, None, tmp_path / "a.pt")
    assert rec["stages_equal_predict_action_chunk"] is True
    assert rec["mode"] == "int8" and rec["cams"] == 2 and rec["num_steps"] == 3
    parts = rec["vision_s_median"] + rec["prefix_s_median"] + rec["denoise_s_median"]
    assert rec["s_per_chunk_min"] <= parts * 1.5 and rec["gflop_per_chunk"] >= 0
    assert rec["peak_rss_runs_gb"] > 0 and rec["peak_rss_gb"] >= rec["peak_rss_runs_gb"] - 0.01
    assert torch.load(tmp_path / "a.pt").shape == (1, 4, 2)


def test_train_case_reports_a_step(tmp_path):
    bench.write_checkpoint("micro", None, tmp_path / "ckpt")
    rec = bench.train_case("micro", tmp_path / "ckpt", 2, 1, 1, 7, "bf16")
    assert rec["precision"] == "bf16" and rec["batch"] == 2 and rec["cams"] == 2
    assert rec["trainable"] < rec["params"]
    assert rec["s_per_step_median"] >= rec["fwd_bwd_s_median"]


def test_image_size_sets_the_camera_and_the_vision_tokens(tmp_path):
    bench.write_checkpoint("micro", 1, tmp_path / "small", image_size=8)
    bench.write_checkpoint("micro", 1, tmp_path / "full")
    small = bench.inference_case("micro", tmp_path / "small", "fp32", 1, 1, 7, None, tmp_path / "a.pt")
    full = bench.inference_case("micro", tmp_path / "full", "fp32", 1, 1, 7, None, tmp_path / "b.pt")
    assert (small["camera_px"], small["model_px"], small["vision_tokens_per_cam"]) == (8, 8, 1)
    assert (full["camera_px"], full["model_px"], full["vision_tokens_per_cam"]) == (16, 16, 4)
    with pytest.raises(bench.BenchError, match="--image-size: got 0"):
        bench.write_checkpoint("micro", 1, tmp_path / "bad", image_size=0)


def test_compare_needs_an_existing_interpreter(tmp_path):
    with pytest.raises(bench.BenchError, match=r"--compare: got .*nope"):
        bench.main(["inference", "--preset", "micro", "--compare", str(tmp_path / "nope"), "--no-matmul"])


def test_unknown_mode_is_named():
    with pytest.raises(bench.BenchError, match="--mode: got 'fp8'"):
        bench.main(["inference", "--preset", "micro", "--mode", "fp8", "--no-matmul"])
