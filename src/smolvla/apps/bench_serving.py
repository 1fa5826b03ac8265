"""`smolvla bench serving_load`: latency of the policy server under concurrent clients, server and
clients in separate processes.

    smolvla bench serving_load --policy.path=DIR --clients=16 --requests=20 [--threads=1]

Starts `smolvla serve` on a free loopback port, then runs `--clients` robot-side processes (numpy +
websockets + msgpack only), each sending `--requests` observations one after another (a camera frame
per policy camera at its configured size, a random state, the task), and checks that every answer
belongs to its request. Prints one JSON line: round-trip percentiles (ms), the server's inference time
per request, requests per second overall. The client processes report back as JSON lines on stdout
(nothing is pickled).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from smolvla.apps.bench import BenchError


def client(url: str, requests: int, seed: int) -> None:
    from smolvla.serving.client import PolicyClient

    rng = np.random.default_rng(seed)
    with PolicyClient(url) as policy:
        meta = policy.metadata
        rtts, infer = [], []
        start = time.time()
        for i in range(requests):
            obs = {
                k: rng.integers(0, 256, (s[1], s[2], 3), dtype=np.uint8)
                for k, s in meta["camera_shapes"].items()
            }
            if meta["observation"]["state_dim"]:
                obs["observation.state"] = rng.normal(size=meta["observation"]["state_dim"]).astype(
                    np.float32
                )
            obs.update(task="pick up the cube", request_id=i, timestep=i)
            t0 = time.perf_counter()
            reply = policy.infer(obs)
            rtts.append((time.perf_counter() - t0) * 1000)
            assert reply["request_id"] == i and reply["chunk_index"] == i, reply
            infer.append(reply["server_timing"]["infer_ms"])
    print(json.dumps({"rtts": rtts, "infer": infer, "start": start, "end": time.time()}), flush=True)


@dataclass(frozen=True)
class BenchServingPolicyConfig:
    path: str | None = None  # the checkpoint to serve (a folder or a hub repo id)


@dataclass(frozen=True)
class BenchServingConfig:
    """Latency of the policy server under concurrent client processes."""

    policy: BenchServingPolicyConfig = field(default_factory=BenchServingPolicyConfig)
    clients: int = 16  # client processes, each sending its requests one after another
    requests: int = 20  # requests per client
    threads: int | None = None  # the server's torch threads (serve --threads; None: torch's)


def run(args: BenchServingConfig) -> None:
    """One JSON line: round-trip percentiles, server inference time, requests per second."""
    if not args.policy.path:
        raise BenchError("--policy.path is required: the checkpoint to serve")
    cmd = [
        sys.executable,
        "-m",
        "smolvla.apps.cli",
        "serve",
        f"--policy.path={args.policy.path}",
        "--port=0",
    ]
    if args.threads is not None:
        cmd.append(f"--threads={args.threads}")
    server = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = json.loads(server.stdout.readline())["url"]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "smolvla.apps.bench_serving", url, str(args.requests), str(c)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for c in range(args.clients)
        ]
        results = []
        for pr in procs:
            out, _ = pr.communicate(timeout=600)
            if pr.returncode != 0:
                raise RuntimeError(f"a client process failed (exit {pr.returncode})")
            d = json.loads(out.strip().splitlines()[-1])
            results.append(d)
        # from the first request sent to the last answer received (process start-up excluded)
        wall = max(d["end"] for d in results) - min(d["start"] for d in results)
    finally:
        server.terminate()
        server.wait(timeout=30)
    rtt = np.concatenate([d["rtts"] for d in results])
    infer = np.concatenate([d["infer"] for d in results])
    print(
        json.dumps(
            {
                "clients": args.clients,
                "server_threads": args.threads,
                "load_average_1min": os.getloadavg()[0],
                "requests_each": args.requests,
                "answers": int(rtt.size),
                "round_trip_ms": {f"p{q}": round(float(np.percentile(rtt, q)), 1) for q in (50, 90, 99)},
                "server_infer_ms_p50": round(float(np.percentile(infer, 50)), 1),
                "requests_per_s": round(rtt.size / wall, 1),
            }
        )
    )


if __name__ == "__main__":  # one client process, started by run(): url, requests, seed
    client(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
