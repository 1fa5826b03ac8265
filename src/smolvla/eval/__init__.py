"""Evaluation in simulation (Meta-World): success rates per task and difficulty, charts, videos.

Importing this package does not import the simulator or torch's policy code; `evaluate` runs them in
worker processes.
"""

from smolvla.eval.metaworld import EvalConfig, EvalError, EvalPipelineConfig, evaluate, print_table

__all__ = ["EvalConfig", "EvalError", "EvalPipelineConfig", "evaluate", "print_table"]
