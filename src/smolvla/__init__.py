"""smolvla: SmolVLA, faithful to LeRobot's, fast on consumer hardware.

The top-level names load lazily, so that light modules (configs, the Meta-World env, the serving
client) can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
_EXPORTS = {
    "BackboneConfig": "smolvla.config",
    "SmolVLAConfig": "smolvla.config",
    "preset": "smolvla.config",
    "SmolVLAPolicy": "smolvla.policy",
    "make_pre_post_processors": "smolvla.processing",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'smolvla' has no attribute {name!r}")
