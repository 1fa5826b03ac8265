"""The exported backends in `smolvla bench inference --backend ...`: the export itself, a policy run by
ONNX Runtime or OpenVINO, and what "auto" picks. Each runs in its own child process (started by
`smolvla.apps.bench`), and the exported runs import no torch, so their peak RSS is the runtime's own.

The exported runs take the same inputs and noise as the torch runs (written by the parent as
safetensors): the prefix graph's inputs directly (tokens, normalized state, images), so tokenization
and normalization are outside the timing on both sides.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from smolvla.apps.bench_measure import median, peaks, timed_runs


def export_case(checkpoint: str) -> dict[str, Any]:
    """`load_policy`'s own export of the checkpoint into the cache ($SMOLVLA_CACHE): its time, files,
    peak RSS and check (each backend beside PyTorch)."""
    from smolvla.runtime.select import ensure_export

    t0 = time.perf_counter()
    folder = ensure_export(checkpoint, log=lambda m: print(m, file=sys.stderr, flush=True))
    total = time.perf_counter() - t0
    meta = json.loads((folder / "smolvla_export.json").read_text())
    sizes: dict[str, float] = {}
    for form, graphs in meta["graphs"].items():
        # a graph's files: prefix.onnx + prefix.onnx.data, openvino/prefix.int8.xml + .bin
        mine = {g.rsplit(".", 1)[0] for g in graphs.values()} | set(graphs.values())
        n = sum(size for f, size in meta["files"].items() if f.rsplit(".", 1)[0] in mine)
        sizes[form] = round(n / 2**20, 1)
    return {
        "case": "export",
        "path": str(folder),
        "total_s": round(total, 1),
        "export_s": meta.get("export_seconds"),
        "size_mb": sizes,
        "check": meta.get("check", {}).get("results"),
        **peaks(),
    }


def exported_case(
    export_dir: str,
    backend: str,
    mode: str,
    runs: int,
    threads: int,
    num_steps: int | None,
    inputs: str,
    actions_out: str,
) -> dict[str, Any]:
    from smolvla.runtime.exported import ExportedPolicy

    t0 = time.perf_counter()
    policy = ExportedPolicy(export_dir, backend, mode, threads=threads)
    load_s = time.perf_counter() - t0
    x = load_file(inputs)
    feeds = {k: x[k] for k in ("tokens", "token_mask", "state")}
    feeds.update({f"image_{j}": x[k] for j, k in enumerate(policy.cameras)})
    steps = num_steps or policy.num_steps

    def chunk() -> tuple[np.ndarray, float, float]:
        t0 = time.perf_counter()
        cache = policy.prefill(feeds)
        t1 = time.perf_counter()
        a = policy.sample(cache, x["noise"], steps)
        return a, t1 - t0, time.perf_counter() - t1

    samples, cpu, rss = timed_runs(chunk, runs)
    actions = samples[-1][0][:, :, : policy.action_dim].astype(np.float32)
    save_file({"actions": np.ascontiguousarray(actions)}, actions_out)
    totals = [a + b for _, a, b in samples]
    version = __import__(backend).__version__
    return {
        "case": "inference",
        "impl": "smolvla",
        "backend": backend,
        "mode": mode,
        "cams": len(policy.cameras),
        "threads": threads,
        "lang_tokens": policy.max_length,
        "num_steps": steps,
        "runs": runs,
        "s_per_chunk_median": median(totals),
        "s_per_chunk_min": round(min(totals), 4),
        "chunks_per_s": round(1 / statistics.median(totals), 3),
        "cpu_s_per_chunk_median": median(cpu),
        "prefix_s_median": median([a for _, a, _ in samples]),
        "denoise_s_median": median([b for _, _, b in samples]),
        **rss,
        "load_s": round(load_s, 2),
        backend: version,
    }


def auto_case(checkpoint: str, threads: int) -> dict[str, Any]:
    """What `--policy.backend=auto` picks here, measured afresh, with the table it chose from."""
    from smolvla.runtime.select import measure

    t0 = time.perf_counter()
    table = measure(
        checkpoint, "auto", "auto", refresh=True, threads=threads, log=lambda m: print(m, file=sys.stderr)
    )
    return {
        "case": "auto",
        "choice": table["choice"],
        "max_error": table["max_error"],
        "reference": table["reference"],
        "rows": table["rows"],
        "machine": table["machine"],
        "measure_s": round(time.perf_counter() - t0, 1),
    }


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    case = spec.pop("case")
    if case == "export":
        return export_case(**spec)
    if case == "exported":
        return exported_case(**spec)
    if case == "auto":
        return auto_case(**spec)
    raise ValueError(f"case: got {case!r}, expected export, exported or auto")


if __name__ == "__main__":  # a case in its own process, started by smolvla.apps.bench
    if sys.argv[1:2] != ["_case"] or len(sys.argv) != 3:
        sys.exit("usage: python -m smolvla.apps.bench_exported _case SPEC_JSON (a child of `smolvla bench`)")
    print(json.dumps(run_case(json.loads(sys.argv[2]))), flush=True)
