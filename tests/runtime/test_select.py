"""`load_policy`: one way to load a policy on any backend, the export cache, and "auto" by measurement;
the server on an exported backend, answering openpi's client; `smolvla export` and `info --speed`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from smolvla.apps.cli import main
from smolvla.runtime.exported import EXPORT_FILE, ExportedPolicy
from smolvla.runtime.select import (
    TorchPredictor,
    cache_dir,
    ensure_export,
    load_policy,
    measure,
)
from tests.serving.conftest import micro_obs

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


def obs(seed: int = 0) -> dict:
    """micro_obs with both cameras at the checkpoint's own sizes (the export's static shapes)."""
    o = micro_obs(seed)
    o["observation.images.camera2"] = np.random.default_rng(seed).random((3, 12, 16), dtype=np.float32)
    return o


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SMOLVLA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_checkpoint_on_onnxruntime_is_exported_once_and_reused(micro_ckpt, cache):
    logs: list[str] = []
    p = load_policy(micro_ckpt, "onnxruntime", log=logs.append)
    assert isinstance(p, ExportedPolicy) and p.backend == "onnxruntime" and p.precision == "fp32"
    assert p.folder.parent == cache_dir() / "exports" and (p.folder / EXPORT_FILE).is_file()
    assert any("exporting" in m for m in logs)
    stamp = (p.folder / EXPORT_FILE).stat().st_mtime_ns
    logs.clear()
    again = load_policy(micro_ckpt, "openvino", "int8", log=logs.append)
    assert again.folder == p.folder and (p.folder / EXPORT_FILE).stat().st_mtime_ns == stamp
    assert not any("exporting" in m for m in logs)
    # the same actions as torch, from raw observations, on the same noise
    torch_p = load_policy(micro_ckpt, "torch")
    assert isinstance(torch_p, TorchPredictor)
    noise = p.noise(4)
    np.testing.assert_allclose(p.predict_chunk(obs(), noise), torch_p.predict_chunk(obs(), noise), atol=1e-4)


def test_an_export_folder_refuses_torch(micro_ckpt, cache):
    folder = ensure_export(micro_ckpt, log=lambda _: None)
    with pytest.raises(ValueError, match=r"is an export \(ONNX graphs\): run it with --policy.backend"):
        load_policy(folder, "torch")


def test_bad_backend_and_precision_are_named(micro_ckpt):
    with pytest.raises(ValueError, match=r"--policy.backend: got 'tensorrt', expected 'auto' or one of"):
        load_policy(micro_ckpt, "tensorrt")
    with pytest.raises(ValueError, match=r"--policy.inference_mode: got 'fp8', expected 'auto' or one of"):
        load_policy(micro_ckpt, "torch", "fp8")


def test_auto_picks_the_fastest_within_the_bound_and_caches_the_table(micro_ckpt, cache):
    logs: list[str] = []
    table = measure(micro_ckpt, log=logs.append)
    rows = table["rows"]
    assert {(r["backend"], r["precision"]) for r in rows} >= {
        ("torch", "fp32"),
        ("onnxruntime", "fp32"),
        ("onnxruntime", "int8"),
        ("openvino", "fp32"),
        ("openvino", "int8"),
    }
    assert rows[0]["error_mean"] == 0.0  # the reference
    ok = [r for r in rows if r["within_bound"]]
    assert all(r["error_mean"] <= table["max_error"] for r in ok)
    best = min(ok, key=lambda r: r["s_per_chunk"])
    assert table["choice"] == {"backend": best["backend"], "precision": best["precision"]}
    assert table["machine"]["threads"] >= 1 and "cpu" in table["machine"]
    # cached: read back without measuring
    logs.clear()
    assert measure(micro_ckpt, log=logs.append) == table and not logs
    p = load_policy(micro_ckpt, "auto", log=logs.append)
    assert (p.backend, p.precision) == (best["backend"], best["precision"])
    # a bound nothing but the reference meets: the reference is chosen
    strict = measure(micro_ckpt, refresh=True, max_error=0.0, log=lambda _: None)
    assert strict["choice"] == {"backend": "torch", "precision": "fp32"}
    # auto within one backend measures that backend's precisions only
    ort = measure(micro_ckpt, "onnxruntime", "auto", log=lambda _: None)
    assert {r["backend"] for r in ort["rows"]} == {"onnxruntime"}


def test_serve_onnxruntime_answers_the_openpi_client(micro_ckpt, cache):
    wcp = pytest.importorskip("openpi_client.websocket_client_policy")
    from smolvla.serving.server import InferenceEngine, PolicyServer, ServerConfig, ServerThread

    engine = InferenceEngine.load(str(micro_ckpt), backend="onnxruntime")
    torch_p = load_policy(micro_ckpt, "torch")
    with ServerThread(PolicyServer(engine, ServerConfig(port=0))) as st:
        client = wcp.WebsocketClientPolicy(host="127.0.0.1", port=st.server.port)
        meta = client.get_server_metadata()
        assert meta["backend"] == "onnxruntime" and meta["precision"] == "fp32"
        out = client.infer({**obs(), "seed": 3})
        expected = torch_p.predict_chunk(obs(), engine.predictor.noise(3))
        np.testing.assert_allclose(out["actions"], expected, atol=1e-4)
        with pytest.raises(RuntimeError, match=r"camera2: got shape \(3, 16, 16\), expected \[12, 16, 3\]"):
            client.infer({**obs(), "observation.images.camera2": np.zeros((16, 16, 3), np.uint8)})
        assert client.infer(obs(1))["actions"].shape == (4, 2)  # the connection goes on


def test_rtc_is_refused_on_exported_backends_before_loading(micro_ckpt):
    from smolvla.model.rtc import RTCConfig
    from smolvla.serving.server import InferenceEngine

    with pytest.raises(ValueError, match=r"RTC differentiates the policy.*not onnxruntime None"):
        InferenceEngine.load(str(micro_ckpt), backend="onnxruntime", rtc=RTCConfig())


def test_serve_imports_no_torch_on_an_exported_backend(micro_ckpt, cache):
    """The server process on a robot's computer: the export served without torch installed."""
    folder = ensure_export(micro_ckpt, log=lambda _: None)
    code = f"""
import sys
sys.modules["torch"] = None
from smolvla.serving.server import InferenceEngine
engine = InferenceEngine.load({str(folder)!r}, backend="openvino")
print(engine.metadata()["backend"])
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "openvino"


def test_export_command_and_info(micro_ckpt, tmp_path, capsys, cache):
    out = tmp_path / "exp"
    assert main(["export", f"--policy.path={micro_ckpt}", f"--output_dir={out}", "--int8=false"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    meta = json.loads((out / EXPORT_FILE).read_text())
    assert set(meta["graphs"]) == {"fp32"} and meta["check"]["results"]["onnxruntime/fp32"]["max_abs"] <= 1e-4
    assert main(["info", f"--policy.path={out}"]) == 0
    text = capsys.readouterr().out
    assert "SmolVLA export" in text and "check         onnxruntime/fp32" in text
    assert main(["info", f"--policy.path={out}", "--speed=true"]) == 0
    text = capsys.readouterr().out
    assert "<- auto" in text and "onnxruntime" in text and "torch" not in text.split("speed here")[1]
    # an existing folder that is not an export is not overwritten
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["export", f"--policy.path={micro_ckpt}", f"--output_dir={tmp_path / 'other'}"]) == 2
    assert "exists and is not an export" in capsys.readouterr().err


def test_eval_runs_an_exported_backend_and_replays_episodes(tiny_ckpt, tmp_path, cache):
    pytest.importorskip("metaworld")
    from smolvla.eval.metaworld import EvalConfig, evaluate

    common = dict(tasks=("reach-v3",), n_episodes=1, max_episode_steps=12, workers=1, videos=False)

    def run(name: str) -> dict:
        cfg = EvalConfig(policy_path=tiny_ckpt, output_dir=tmp_path / name, backend="onnxruntime", **common)
        return evaluate(cfg, progress=False)

    a, b = run("a"), run("b")
    assert a["policy"]["backend"] == "onnxruntime"
    ea, eb = a["tasks"]["reach-v3"]["episodes"][0], b["tasks"]["reach-v3"]["episodes"][0]
    assert ea["sum_reward"] == eb["sum_reward"] and np.isfinite(ea["sum_reward"])  # the seed sets the noise
