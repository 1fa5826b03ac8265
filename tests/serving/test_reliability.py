"""Reliability on loopback, bounded in count and time: many concurrent clients, and misbehaving
clients (disconnect mid-message, garbage, a 100 MB frame, stalling) that must not disturb the others."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time

import numpy as np
import pytest
import websockets.sync.client
from websockets.exceptions import ConnectionClosed

from smolvla.serving.client import PolicyClient
from smolvla.serving.protocol import packb
from smolvla.serving.server import PolicyServer, ServerConfig, ServerThread
from tests.serving.conftest import micro_obs

N_CLIENTS = 16
N_REQUESTS = 5


def test_concurrent_clients_get_every_chunk_once_in_order(server, micro_engine):
    """16 clients x 5 requests at once. Each request has its own observation and seed, so each answer
    can be checked against the chunk computed for exactly that request: nothing lost, duplicated,
    swapped between clients, or out of order."""
    replies: dict[int, list[dict]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(N_CLIENTS)

    def run(c: int) -> None:
        try:
            with PolicyClient(server.url) as client:
                start.wait(timeout=30)
                out = []
                for i in range(N_REQUESTS):
                    t0 = time.perf_counter()
                    reply = client.infer(
                        {**micro_obs(c), "seed": 1000 * c + i, "request_id": i, "timestep": i}
                    )
                    reply["rtt_ms"] = (time.perf_counter() - t0) * 1000
                    out.append(reply)
                replies[c] = out
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(N_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sorted(replies) == list(range(N_CLIENTS))
    for c, out in replies.items():
        assert [r["request_id"] for r in out] == list(range(N_REQUESTS))
        assert [r["chunk_index"] for r in out] == list(range(N_REQUESTS))
        assert [r["timestep"] for r in out] == list(range(N_REQUESTS))
        obs, _ = micro_engine.spec.validate(micro_obs(c))
        for i, r in enumerate(out):
            expected = micro_engine.infer(obs, seed=1000 * c + i)
            np.testing.assert_allclose(r["actions"], expected, rtol=0, atol=1e-5)
    rtt = np.array([r["rtt_ms"] for out in replies.values() for r in out])
    infer = np.array([r["server_timing"]["infer_ms"] for out in replies.values() for r in out])
    print(
        f"\n{N_CLIENTS} clients x {N_REQUESTS} requests: round trip ms p50 {np.percentile(rtt, 50):.1f} "
        f"p90 {np.percentile(rtt, 90):.1f} p99 {np.percentile(rtt, 99):.1f}; "
        f"inference ms p50 {np.percentile(infer, 50):.1f}"
    )
    assert server.server.stats.requests == N_CLIENTS * N_REQUESTS


def _frame_header(length: int, opcode: int = 0x2, fin: bool = True) -> bytes:
    """A masked client frame header (RFC 6455) announcing `length` payload bytes."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return struct.pack("!BB", first, 0x80 | length) + b"\0\0\0\0"
    if length < 2**16:
        return struct.pack("!BBH", first, 0x80 | 126, length) + b"\0\0\0\0"
    return struct.pack("!BBQ", first, 0x80 | 127, length) + b"\0\0\0\0"  # zero mask: payload as is


class RawClient(socket.socket):
    """A TCP socket that did the WebSocket handshake by hand; `early` holds frame bytes that came with
    the handshake answer."""

    early = b""


def _raw_handshake(port: int) -> RawClient:
    plain = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = RawClient(fileno=plain.detach())
    s.settimeout(10)
    s.sendall(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    assert data.startswith(b"HTTP/1.1 101")
    s.early = data.split(b"\r\n\r\n", 1)[1]
    return s


def _server_frames(s: RawClient) -> list[tuple[int, int | None]]:
    """(opcode, close code) of the unmasked frames a server sends until it closes the socket."""
    s.settimeout(20)
    data = s.early
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            data += chunk
    frames, i = [], 0
    while i < len(data):
        opcode, n = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n, i = struct.unpack("!H", data[i : i + 2])[0], i + 2
        elif n == 127:
            n, i = struct.unpack("!Q", data[i : i + 8])[0], i + 8
        payload, i = data[i : i + n], i + n
        frames.append((opcode, struct.unpack("!H", payload[:2])[0] if opcode == 0x8 else None))
    return frames


def _healthy(url: str, seed: int = 0) -> None:
    with PolicyClient(url) as client:
        assert client.infer({**micro_obs(seed), "seed": seed})["actions"].shape == (4, 2)


def test_misbehaving_clients_do_not_disturb_the_others(micro_engine):
    config = ServerConfig(port=0, idle_timeout=6.0, max_message_bytes=8 * 2**20)
    with ServerThread(PolicyServer(micro_engine, config)) as st:
        port = st.server.port
        url = st.url

        def good(seed: int) -> None:  # a well-behaved client, served whatever the others do
            _healthy(url, seed)

        # 1. disconnects in the middle of a message
        s = _raw_handshake(port)
        payload = packb(micro_obs())
        s.sendall(_frame_header(len(payload)) + payload[: len(payload) // 2])
        s.close()
        good(0)

        # 2. garbage: random bytes as a message (an error answer), and not even WebSocket
        with websockets.sync.client.connect(st.url) as ws:
            ws.recv()  # metadata
            # 0xc1 is the one byte msgpack never uses: whatever random bytes follow, it is not msgpack
            ws.send(b"\xc1" + os.urandom(999))
            assert ws.recv().startswith("error: not a valid msgpack message")
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        raw.sendall(os.urandom(4096))
        raw.close()
        good(1)

        # 3. a 100 MB frame: refused from its header (close code 1009, message too big), never buffered
        s = _raw_handshake(port)
        s.sendall(_frame_header(100 * 2**20))
        with contextlib.suppress(OSError):  # the server may reset the connection while we still send
            for _ in range(100):
                s.sendall(bytes(2**20))
        assert _server_frames(s) == [(0x2, None), (0x8, 1009)]  # metadata, then "too big"
        s.close()
        good(2)

        # 4. stalls: one sends half a frame and waits, one never sends; others are served meanwhile
        stalled = _raw_handshake(port)
        stalled.sendall(_frame_header(1000) + b"\x81")
        silent = websockets.sync.client.connect(st.url).__enter__()
        silent.recv()
        threads = [threading.Thread(target=_healthy, args=(st.url, i)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        good(3)
        # the idle timeout frees the stalled connections
        with pytest.raises(ConnectionClosed) as e:
            silent.recv(timeout=20)
        assert e.value.rcvd.code == 1008
        assert _server_frames(stalled) == [(0x2, None), (0x8, 1008)]  # metadata, then closed as idle
        stalled.close()
        stats = st.server.stats
        assert stats.errors >= 1 and stats.requests >= 8
