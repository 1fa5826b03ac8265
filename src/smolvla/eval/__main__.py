"""`python -m smolvla.eval ...`: the same as `smolvla eval ...` (and how the workers start)."""

import sys

from smolvla.eval.metaworld import EvalError, main

try:
    sys.exit(main())
except (ValueError, FileNotFoundError, EvalError) as e:  # our errors name the problem: no traceback
    print(f"smolvla eval: error: {e}", file=sys.stderr)
    sys.exit(2)
