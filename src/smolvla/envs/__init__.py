"""Simulation environments for evaluating and recording demonstrations (Meta-World).

Importing this package does not import the simulator: `MetaWorldEnv` loads Meta-World when built.
"""

from smolvla.envs.metaworld import (
    DIFFICULTY,
    INSTRUCTIONS,
    TASKS,
    MetaWorldEnv,
    expert_action,
    tasks_for,
)

__all__ = ["DIFFICULTY", "INSTRUCTIONS", "TASKS", "MetaWorldEnv", "expert_action", "tasks_for"]
