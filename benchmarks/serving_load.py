"""Latency of the policy server under concurrent clients, server and clients in separate processes.

    python benchmarks/serving_load.py --policy.path=DIR --clients 16 --requests 20

Starts `smolvla serve` on a free loopback port, then runs `--clients` robot-side processes (numpy +
websockets + msgpack only), each sending `--requests` observations one after another (a camera frame
per policy camera at its configured size, a random state, the task), and checks that every answer
belongs to its request. Prints one JSON line: round-trip percentiles (ms), the server's inference time
per request, requests per second overall.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import time

import numpy as np


def client(url: str, requests: int, seed: int, out: mp.Queue) -> None:
    from smolvla.serving.client import PolicyClient

    rng = np.random.default_rng(seed)
    with PolicyClient(url) as policy:
        meta = policy.metadata
        rtts, infer = [], []
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
    out.put((rtts, infer))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--policy.path", dest="policy_path", required=True)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=20)
    args = p.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-m", "smolvla.cli", "serve", f"--policy.path={args.policy_path}", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = json.loads(server.stdout.readline())["url"]
        ctx = mp.get_context("spawn")
        out: mp.Queue = ctx.Queue()
        procs = [ctx.Process(target=client, args=(url, args.requests, c, out)) for c in range(args.clients)]
        t0 = time.perf_counter()
        for pr in procs:
            pr.start()
        results = [out.get(timeout=600) for _ in procs]
        wall = time.perf_counter() - t0
        for pr in procs:
            pr.join()
    finally:
        server.terminate()
        server.wait(timeout=30)
    rtt = np.concatenate([r[0] for r in results])
    infer = np.concatenate([r[1] for r in results])
    print(
        json.dumps(
            {
                "clients": args.clients,
                "requests_each": args.requests,
                "answers": int(rtt.size),
                "round_trip_ms": {f"p{q}": round(float(np.percentile(rtt, q)), 1) for q in (50, 90, 99)},
                "server_infer_ms_p50": round(float(np.percentile(infer, 50)), 1),
                "requests_per_s": round(rtt.size / wall, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
