"""Evaluation in simulation (Meta-World): success rates per task and difficulty, charts, videos.

Importing this package does not import the simulator or torch's policy code; `evaluate` runs them in
worker processes.
"""

from smolvla.eval.metaworld import EvalConfig, EvalError, evaluate, main, print_table

__all__ = ["EvalConfig", "EvalError", "evaluate", "main", "print_table"]
