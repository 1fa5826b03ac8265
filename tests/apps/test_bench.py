"""The benchmark harness (smolvla.apps.bench) on the micro preset: fields, consistency, clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smolvla.apps import bench
from smolvla.apps.cli import main, parse


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The cases set torch's thread count for their process (in a real run, their own child); here
    they run in the test process, which must get its count back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_inference_case_reports_the_stages_of_predict_action_chunk(tmp_path):
    bench.write_checkpoint("micro", 2, tmp_path / "ckpt")
    rec = bench.inference_case("micro", tmp_path / "ckpt", "int8", 2, 1, 7, None, tmp_path / "a.safetensors")
    assert rec["stages_equal_predict_action_chunk"] is True
    assert rec["mode"] == "int8" and rec["cams"] == 2 and rec["num_steps"] == 3
    parts = rec["vision_s_median"] + rec["prefix_s_median"] + rec["denoise_s_median"]
    assert rec["s_per_chunk_min"] <= parts * 1.5 and rec["gflop_per_chunk"] >= 0
    assert rec["peak_rss_runs_gb"] > 0 and rec["peak_rss_gb"] >= rec["peak_rss_runs_gb"] - 0.01
    assert load_file(tmp_path / "a.safetensors")["actions"].shape == (1, 4, 2)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_case_reports_a_step(tmp_path, monkeypatch, precision):
    """The case times real optimizer steps set up as `smolvla train --precision` sets them up: the
    trainable weights move, the frozen ones do not, bf16 stores the (bf16-exact) frozen parts in bf16."""
    from safetensors.torch import load_file

    from smolvla.policy import SmolVLAPolicy

    bench.write_checkpoint("micro", None, tmp_path / "ckpt")
    loaded = []
    load = SmolVLAPolicy.from_pretrained.__func__

    def keep(cls, *args, **kwargs):
        loaded.append(load(cls, *args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(SmolVLAPolicy, "from_pretrained", classmethod(keep))
    rec = bench.train_case("micro", tmp_path / "ckpt", 2, 2, 1, 7, precision)
    assert rec["precision"] == precision and rec["batch"] == 2 and rec["cams"] == 2
    assert len(rec["losses"]) == 2 and all(0 < v < 100 for v in rec["losses"])
    assert rec["samples_per_s"] > 0
    (policy,) = loaded
    before = load_file(tmp_path / "ckpt" / "model.safetensors")
    params = dict(policy.named_parameters())
    moved = {k for k, p in params.items() if not torch.equal(p.detach().float(), before[k].float())}
    trainable = {k for k, p in params.items() if p.requires_grad}
    assert moved and moved <= trainable and rec["trainable"] == sum(params[k].numel() for k in trainable)
    frozen = {params[k].dtype for k in params.keys() - trainable}
    assert (torch.bfloat16 in frozen) == (precision == "bf16")  # fp32 loads the bf16 checkpoint as fp32


def test_memory_is_counted_per_finetuning_mode_and_planned(tmp_path):
    """What trains per mode, its optimizer state as AdamW really holds it, activations counted per sample,
    checkpointing keeping fewer; the plan turns them into batch sizes per GPU."""
    bench.write_checkpoint("micro", None, tmp_path / "ckpt")
    base_cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert base_cfg["train_expert_only"] and base_cfg["freeze_vision_encoder"]

    def case(mode: str, b: int = 2, **kw) -> dict:
        return bench.train_case("micro", tmp_path / "ckpt", b, 1, 1, 7, "fp32", finetune=mode, **kw)

    rows = {m: case(m) for m in bench.FINETUNE}
    trained = [rows[m]["trainable"] for m in ("lora", "expert", "vlm", "full")]
    assert trained == sorted(trained) and len(set(trained)) == 4
    for r in rows.values():
        assert r["optimizer_state_found_gb"] == r["optimizer_state_gb"]  # AdamW's, as counted
        assert r["activations_per_sample_gb"] > 0 and "measured_gb" in r and r["timed"]
    ckpt = case("full", gradient_checkpointing=True)
    assert ckpt["activations_per_sample_gb"] < rows["full"]["activations_per_sample_gb"]
    big = case("full", b=64, timed=False)
    assert "s_per_step_median" not in big and big["estimate_gb"] > rows["full"]["estimate_gb"]
    plans = {p["finetune"]: p for p in bench.memory_plan([*rows.values(), big])}
    assert plans["lora"]["basis"] == "measured" and plans["full"]["per_sample_gb"] > 0
    counted = bench.memory_plan([big])[0]
    assert counted["basis"] == "counted" and counted["max_batch"]["80GB"] >= counted["max_batch"]["8GB"]
    with pytest.raises(bench.BenchError, match="--finetune: got 'qlora'"):
        case("qlora")


def test_image_size_sets_the_camera_and_the_vision_tokens(tmp_path):
    bench.write_checkpoint("micro", 1, tmp_path / "small", image_size=8)
    bench.write_checkpoint("micro", 1, tmp_path / "full")
    small = bench.inference_case("micro", tmp_path / "small", "fp32", 1, 1, 7, None, tmp_path / "a.pt")
    full = bench.inference_case("micro", tmp_path / "full", "fp32", 1, 1, 7, None, tmp_path / "b.pt")
    assert (small["camera_px"], small["model_px"], small["vision_tokens_per_cam"]) == (8, 8, 1)
    assert (full["camera_px"], full["model_px"], full["vision_tokens_per_cam"]) == (16, 16, 4)
    with pytest.raises(bench.BenchError, match="--image_size: got 0"):
        bench.write_checkpoint("micro", 1, tmp_path / "bad", image_size=0)


def test_compare_needs_an_existing_interpreter(tmp_path, capsys):
    argv = ["bench", "inference", "--policy.preset=micro", f"--compare={tmp_path / 'nope'}", "--matmul=false"]
    assert main(argv) == 2
    assert "smolvla bench inference: error: --compare: got" in capsys.readouterr().err


def test_unknown_mode_is_named():
    _, cfg = parse(["bench", "inference", "--policy.preset=micro", "--mode", "fp8", "--matmul=false"])
    with pytest.raises(bench.BenchError, match="--mode: got 'fp8'"):
        bench.run_command(cfg)


def test_list_flags_take_space_separated_values_and_old_spellings(capsys):
    """The issue's own example, and the flags before LeRobot's spelling."""
    _, cfg = parse(["bench", "inference", "--cams", "2", "--mode", "fp32", "bf16", "int8"])
    assert cfg.cams == (2,) and cfg.mode == ("fp32", "bf16", "int8") and cfg.policy.preset == "base"
    _, cfg = parse(["bench", "train", "--preset", "micro", "--batch", "2", "--no-matmul", "--precision=bf16"])
    assert (cfg.policy.preset, cfg.batch_size, cfg.matmul, cfg.precision) == ("micro", (2,), False, ("bf16",))
    assert "--batch is deprecated, use --batch_size=..." in capsys.readouterr().err


def test_data_loader_case_prints_a_json_line():
    """As a user runs it: its own process (its DataLoader workers fork from a plain interpreter)."""
    import subprocess
    import sys

    argv = ["bench", "data_loader", "--sizes", "16", "--codecs=h264", "--episodes=2", "--length=100"]
    env = {**os.environ, "PYTHONPATH": str(Path(bench.__file__).resolve().parents[2])}
    p = subprocess.run(
        [sys.executable, "-m", "smolvla.apps.cli", *argv, "--batches=1"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    (line,) = p.stdout.splitlines()
    rec = json.loads(line)
    assert (rec["size"], rec["codec"], rec["frames"], rec["frames_source"]) == (16, "h264", 200, "synthetic")
    assert rec["record_fps"] > 0 and rec["loader_samples_per_s"] > 0 and rec["psnr_db"] > 20


def test_serving_load_case_prints_a_json_line(micro_ckpt, capsys, monkeypatch):
    src = str(Path(bench.__file__).resolve().parents[2])  # the server and clients import this checkout
    monkeypatch.setenv("PYTHONPATH", src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    assert main(["bench", "serving_load", f"--policy.path={micro_ckpt}", "--clients=2", "--requests=2"]) == 0
    rec = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert rec["clients"] == 2 and rec["answers"] == 4 and rec["requests_per_s"] > 0


def test_a_child_case_runs_from_its_json_spec(tmp_path):
    """The driver and its children speak one JSON spec (no second flag parser): a case round-trips."""
    rec = bench._child("checkpoint", preset="micro", cams=1, out=str(tmp_path / "ck"), image_size=None)
    assert rec == {"case": "checkpoint", "path": str(tmp_path / "ck")}
    assert (tmp_path / "ck" / "model.safetensors").is_file()
    bad = bench._child("nonsense")
    assert bad["rc"] != 0 and "case: got 'nonsense'" in bad["error"]


def test_exported_backends_run_the_torch_cases_inputs():
    """`--backend onnxruntime openvino`: the export as load_policy makes it, then each backend x mode
    on the torch cases' own inputs and noise, so fp32 agrees with torch fp32 to float rounding."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    argv = ["bench", "inference", "--policy.preset=micro", "--cams", "1", "--mode", "fp32", "int8"]
    argv += ["--backend", "torch", "onnxruntime", "openvino", "--runs=1", "--matmul=false", "--lang=7"]
    cfg = parse(argv)[1]
    recs = bench.run_inference(cfg, None)
    export = next(r for r in recs if r["case"] == "export")
    assert export["size_mb"]["fp32"] > 0 and export["check"]["onnxruntime/fp32"]["max_abs"] <= 1e-4
    rows = {(r.get("backend", "torch"), r["mode"]): r for r in recs if r["case"] == "inference"}
    assert set(rows) == {(b, m) for b in ("torch", "onnxruntime", "openvino") for m in ("fp32", "int8")}
    for backend in ("onnxruntime", "openvino"):
        assert rows[backend, "fp32"]["action_err_vs_fp32_max"] <= 1e-4
        assert 0 < rows[backend, "int8"]["action_err_vs_fp32_mean"] < 0.2
        assert (
            rows[backend, "fp32"]["s_per_chunk_median"] > 0 and rows[backend, "fp32"]["peak_rss_runs_gb"] > 0
        )
    with pytest.raises(bench.BenchError, match=r"--backend: got 'tensorrt', expected some of"):
        bench.run_inference(parse(["bench", "inference", "--backend", "tensorrt"])[1], None)
