"""Inference latency, memory and action error per mode (same as `smolvla bench inference`).

    python benchmarks/inference.py --preset base --cams 2 3 --mode reference fp32 bf16 int8 --runs 5
    python benchmarks/inference.py --cams 2 --compare ../lerobot-env/bin/python

One JSON line per case (each case in its own process); see `smolvla bench --help`.
"""

import sys

from smolvla.apps.bench import main

if __name__ == "__main__":
    main(["inference", *sys.argv[1:]])
