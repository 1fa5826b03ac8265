"""The policy server: openpi-client compatibility, errors that keep the connection, API keys,
per-connection state, the image fix, RTC, graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import websockets.sync.client
from websockets.exceptions import ConnectionClosed, InvalidStatus

from smolvla.model.rtc import RTCConfig
from smolvla.serving.server import InferenceEngine, PolicyServer, ServerConfig, ServerThread
from tests.serving.conftest import micro_obs
from tests.serving.openpi_wire import openpi_style_packb


class MiniOpenpiClient:
    """openpi-client's wire behaviour, re-implemented from its source so the check runs without it:
    connect (optional `Authorization: Api-Key` header, no compression), read the metadata frame, then
    per `infer` send the msgpack observation and read a binary answer or a text error."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self.ws = websockets.sync.client.connect(
            url, compression=None, max_size=None, additional_headers=headers
        )
        self.metadata = self._unpack(self.ws.recv())

    @staticmethod
    def _pack(obj) -> bytes:
        return openpi_style_packb(obj)

    @staticmethod
    def _unpack(data: bytes):
        def hook(d):
            if b"__ndarray__" in d:
                return np.ndarray(buffer=d[b"data"], dtype=np.dtype(d[b"dtype"]), shape=d[b"shape"])
            if b"__npgeneric__" in d:
                return np.dtype(d[b"dtype"]).type(d[b"data"])
            return d

        return msgpack.unpackb(data, object_hook=hook)

    def send_raw(self, data) -> object:
        self.ws.send(data)
        reply = self.ws.recv()
        return reply if isinstance(reply, str) else self._unpack(reply)

    def infer(self, obs: dict) -> dict:
        reply = self.send_raw(self._pack(obs))
        if isinstance(reply, str):
            raise RuntimeError(f"Error in inference server:\n{reply}")
        return reply


@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")
def test_openpi_client_gets_actions(server):
    wcp = pytest.importorskip("openpi_client.websocket_client_policy")
    client = wcp.WebsocketClientPolicy(host="127.0.0.1", port=server.server.port)
    meta = client.get_server_metadata()
    assert meta["chunk_size"] == 4 and meta["action_dim"] == 2
    out = client.infer(micro_obs())
    assert out["actions"].shape == (4, 2) and out["actions"].dtype == np.float32
    assert np.isfinite(out["actions"]).all()
    with pytest.raises(RuntimeError, match=r"observation\.state: shape \[4\], expected \[3\]"):
        client.infer({**micro_obs(), "observation.state": np.zeros(4, np.float32)})
    assert client.infer(micro_obs(1))["actions"].shape == (4, 2)  # the connection goes on


def test_openpi_wire_behaviour_gets_actions(server):
    client = MiniOpenpiClient(server.url)
    meta = client.metadata
    assert meta["observation"]["cameras"] == ["observation.images.camera1", "observation.images.camera2"]
    assert meta["observation"]["state_dim"] == 3
    out = client.infer({**micro_obs(), "timestep": 7, "request_id": 42})
    assert out["actions"].shape == (4, 2) and out["actions"].dtype == np.float32
    assert out["timestep"] == 7 and out["request_id"] == 42 and out["chunk_index"] == 0
    assert set(out["server_timing"]) >= {"infer_ms", "queue_ms", "total_ms"}
    assert client.infer(micro_obs())["server_timing"]["prev_total_ms"] > 0


def test_errors_are_readable_and_the_connection_keeps_serving(server):
    client = MiniOpenpiClient(server.url)
    bad = [
        (client._pack({**micro_obs(), "task": "x" * 5000}), r"task: 5000 characters, expected at most 1024"),
        (client._pack({**micro_obs(), "observation.state": np.array([0, np.inf, 0], np.float32)}), "finite"),
        (client._pack({**micro_obs(), "extra": 1}), r"unknown field\(s\) \['extra'\]"),
        (b"\xc1\x00garbage", "not a valid msgpack message"),
        ("a text frame", "expected a binary msgpack message"),
        (msgpack.packb([1, 2, 3]), "expected a map"),
        (msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "|O", b"shape": []}), "dtype"),
    ]
    for data, match in bad:
        reply = client.send_raw(data)
        assert isinstance(reply, str) and reply.startswith("error: ")
        assert __import__("re").search(match, reply), reply
        assert client.infer(micro_obs())["actions"].shape == (4, 2)


def test_control_messages_are_acknowledged(server):
    client = MiniOpenpiClient(server.url)
    assert client.send_raw(client._pack({"__ctrl__": "episode_start", "__task__": "x"})) == {
        "__ack__": "episode_start"
    }
    assert client.send_raw(client._pack({"__ctrl__": "dance"})) == {"__ack__": "ignored"}


@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")
def test_api_key(micro_engine):
    key = "s3cret-key-123"
    with ServerThread(PolicyServer(micro_engine, ServerConfig(port=0, api_key=key))) as st:
        with pytest.raises(InvalidStatus, match="401"):
            MiniOpenpiClient(st.url)
        with pytest.raises(InvalidStatus, match="401"):
            MiniOpenpiClient(st.url, api_key="wrong-key-xyz")
        assert MiniOpenpiClient(st.url, api_key=key).infer(micro_obs())["actions"].shape == (4, 2)
        wcp = pytest.importorskip("openpi_client.websocket_client_policy")
        client = wcp.WebsocketClientPolicy(host="127.0.0.1", port=st.server.port, api_key=key)
        assert client.infer(micro_obs())["actions"].shape == (4, 2)


def test_health_check_and_loopback_default(server):
    assert ServerConfig().host == "127.0.0.1"
    with urllib.request.urlopen(f"http://127.0.0.1:{server.server.port}/healthz", timeout=5) as r:
        assert r.status == 200 and r.read() == b"OK\n"


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="port: got 70000"):
        ServerConfig(port=70000)
    with pytest.raises(ValueError, match="api_key: expected a string of at least 8"):
        ServerConfig(api_key="short")


def test_seeded_answers_are_reproducible(server, micro_engine):
    client = MiniOpenpiClient(server.url)
    a = client.infer({**micro_obs(), "seed": 5})["actions"]
    b = client.infer({**micro_obs(), "seed": 5})["actions"]
    c = client.infer({**micro_obs(), "seed": 6})["actions"]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    obs, _ = micro_engine.spec.validate(micro_obs())
    np.testing.assert_allclose(micro_engine.infer(obs, seed=5), a, rtol=0, atol=1e-6)


def test_frames_are_letterboxed_as_in_sync_inference_not_squashed(micro_engine):
    """Spec §8.6: LeRobot's async server squashes frames to the config's stored shape (bilinear, no
    aspect kept), unlike training and sync inference. Ours runs the sync path on the native frame."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (16, 40, 3), dtype=np.uint8)  # wide, unlike the 16x16 config
    msg = {**micro_obs(), "observation.images.camera1": frame}
    obs, _ = micro_engine.spec.validate(msg)
    served = micro_engine.infer(obs, seed=3)

    p = micro_engine.predictor
    cfg = p.policy.config
    noise = torch.randn(1, cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(3))

    def sync_path(observation):  # what smolvla.eval's PolicyActor does
        chunk = p.policy.predict_action_chunk(p.pre(observation), noise)
        return p.post(chunk)[0].numpy()

    np.testing.assert_allclose(served, sync_path(dict(msg)), rtol=0, atol=1e-6)
    squashed = (
        F.interpolate(
            torch.from_numpy(frame).permute(2, 0, 1)[None].float(),
            size=(16, 16),
            mode="bilinear",
            align_corners=False,
        )[0]
        .permute(1, 2, 0)
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
        .numpy()
    )
    assert not np.allclose(served, sync_path({**msg, "observation.images.camera1": squashed}), atol=1e-4)


def test_rtc_uses_the_unexecuted_rest_of_the_connections_last_chunk(micro_ckpt):
    engine = InferenceEngine.load(str(micro_ckpt), rtc=RTCConfig(execution_horizon=4))
    with ServerThread(PolicyServer(engine, ServerConfig(port=0))) as st:
        a, b = MiniOpenpiClient(st.url), MiniOpenpiClient(st.url)
        assert a.metadata["rtc"]["execution_horizon"] == 4
        assert "rtc_prefix_len" not in a.infer({**micro_obs(), "timestep": 0})
        reply = a.infer({**micro_obs(), "timestep": 1, "inference_delay": 1})
        assert reply["rtc_prefix_len"] == 3  # chunk of 4 from step 0, observed at step 1
        assert "rtc_prefix_len" not in b.infer({**micro_obs(), "timestep": 1})  # per connection
        a.send_raw(a._pack({"__ctrl__": "episode_start"}))
        assert "rtc_prefix_len" not in a.infer({**micro_obs(), "timestep": 2})


def test_sigterm_shuts_down_gracefully(micro_ckpt):
    proc = subprocess.Popen(
        [sys.executable, "-m", "smolvla.apps.cli", "serve", f"--policy.path={micro_ckpt}", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        url = json.loads(proc.stdout.readline())["url"]
        assert url.startswith("ws://127.0.0.1:")
        client = MiniOpenpiClient(url)
        assert client.infer(micro_obs())["actions"].shape == (4, 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert json.loads(proc.stdout.readline()) == {"event": "stopped", "requests": 1}
        with pytest.raises(ConnectionClosed) as e:
            client.ws.recv(timeout=5)
        assert e.value.rcvd.code == 1001
    finally:
        proc.kill()


def test_serve_cli_reports_a_bad_checkpoint(tmp_path, capsys):
    from smolvla.apps.cli import main

    assert main(["serve", f"--policy.path={tmp_path}", "--port", "0"]) == 2
    assert "config.json" in capsys.readouterr().err


def test_api_key_env_must_be_set(micro_ckpt, capsys, monkeypatch):
    from smolvla.apps.cli import main

    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    assert main(["serve", f"--policy.path={micro_ckpt}", "--api-key-env", "NO_SUCH_KEY_VAR"]) == 2
    assert "NO_SUCH_KEY_VAR" in capsys.readouterr().err


def test_http_without_upgrade_is_refused(server):
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.server.port}/", timeout=5)


def test_a_prepared_policy_serves_the_same_actions_as_the_plain_one(micro_ckpt):
    obs = {**micro_obs(), "seed": 3}
    plain = InferenceEngine.load(str(micro_ckpt))
    fast = InferenceEngine.load(str(micro_ckpt), inference_mode="fp32")
    assert fast.predictor.policy.inference_mode == "fp32" and plain.predictor.policy.inference_mode is None
    with (
        ServerThread(PolicyServer(plain, ServerConfig(port=0))) as a,
        ServerThread(PolicyServer(fast, ServerConfig(port=0))) as b,
    ):
        np.testing.assert_allclose(
            MiniOpenpiClient(a.url).infer(obs)["actions"],
            MiniOpenpiClient(b.url).infer(obs)["actions"],
            atol=1e-5,
        )


def test_rtc_refuses_int8_layers(micro_ckpt):
    with pytest.raises(ValueError, match=r"RTC differentiates the policy.*fp32 or bf16, not torch int8"):
        InferenceEngine.load(str(micro_ckpt), inference_mode="int8", rtc=RTCConfig())
