"""`python -m smolvla.eval --worker SPEC`: how evaluate() starts its simulator workers (not a command:
`smolvla eval` is)."""

import json
import sys

from smolvla.eval.metaworld import worker_main

if sys.argv[1:2] != ["--worker"] or len(sys.argv) != 3:
    sys.exit("usage: python -m smolvla.eval --worker SPEC (evaluate()'s workers); use `smolvla eval`")
worker_main(json.loads(sys.argv[2]))
