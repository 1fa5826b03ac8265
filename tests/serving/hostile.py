"""The hostile client of test_hostile.py, kept free of torch so it can run as its own process: in the
server's process its own sending (masking 15 MB frames) would compete for the server's GIL, which a
real attacker on another machine or process does not.

    python -m tests.serving.hostile URL SECONDS

prints `ready` once each message was answered, sends until its standard input closes or SECONDS pass,
then prints one JSON line: the times (time.monotonic, system-wide) of the answers and the answers that
did not name the fault."""

from __future__ import annotations

import json
import sys
import threading
import time

import msgpack
import numpy as np
import websockets.sync.client

from smolvla.serving.protocol import packb

MB = 2**20


def nested_small_ints(total_bytes: int) -> bytes:
    """The audit's message: lists of 4096 one-byte integers, as many as fit in `total_bytes`. Each list
    passes msgpack's per-container limit; together they are millions of values."""
    inner = b"\xdc\x10\x00" + b"\x01" * 4096
    n = (total_bytes - 5) // len(inner)
    return b"\xdd" + n.to_bytes(4, "big") + inner * n


def hostile_messages() -> list[tuple[str, bytes, str]]:
    """(name, message, what the error must name). Beyond the audit's message: the most values the
    decoder still builds (just under its total), deep nesting, a huge announced map, and a valid
    envelope whose checks scan many bytes (a float image with its NaN at the very end)."""
    img = np.zeros((3, 1300, 1000), np.float32)  # 15.6 MB, under the 16 MiB limit
    img[-1, -1, -1] = np.nan
    obs = {
        "observation.images.camera1": np.zeros((16, 16, 3), np.uint8),
        "observation.images.camera2": img,
        "observation.state": np.zeros(3, np.float32),
        "task": "pick up the cube",
    }
    return [
        ("15 MB nested small ints", nested_small_ints(15 * MB), "message: announces more than"),
        ("values just under the total", msgpack.packb([1] * 4000), "request: got list"),
        ("many maps under the total", msgpack.packb([{"a": [0]} for _ in range(1000)]), "request"),
        ("deep nesting", b"\x91" * 100_000 + b"\x01", "message: nested more than"),
        ("4G-entry map announced", b"\xdf\xff\xff\xff\xff", "message: announces more than"),
        ("NaN at the end of a 15 MB float image", packb(obs), "camera2: float image has NaN"),
    ]  # fmt: skip


def main(url: str, seconds: float) -> None:
    messages = hostile_messages()
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    times: list[float] = []
    wrong: list[str] = []
    deadline = time.monotonic() + seconds
    with websockets.sync.client.connect(url, compression=None, max_size=None, open_timeout=10) as ws:
        ws.recv(timeout=10)  # the metadata
        i = 0
        while not stop.is_set() and time.monotonic() < deadline and i < 5000:
            _, data, field = messages[i % len(messages)]
            ws.send(data)
            reply = ws.recv(timeout=30)
            times.append(time.monotonic())
            if not (isinstance(reply, str) and reply.startswith("error: ") and field in reply):
                wrong.append(repr(reply)[:200])
            i += 1
            if i == len(messages):
                print("ready", flush=True)
    print(json.dumps({"times": times, "wrong": wrong}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
