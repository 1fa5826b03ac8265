"""Training-step time, samples/s and memory (smolvla.apps.bench; same as `smolvla bench train`).

    python benchmarks/train_step.py --preset tiny --batch 64 --lang 24
    python benchmarks/train_step.py --preset base --cams 2 --batch 4 --precision fp32 bf16

One JSON line per case (each case in its own process); see `smolvla bench --help`.
"""

import sys

from smolvla.apps.bench import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
