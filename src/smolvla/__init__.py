"""smolvla: SmolVLA, faithful to LeRobot's, fast on consumer hardware.

The top-level names load lazily, so that light modules (configs, the Meta-World env, the serving
client) can be imported without torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"
_EXPORTS = {
    "BackboneConfig": "smolvla.config",
    "SmolVLAConfig": "smolvla.config",
    "preset": "smolvla.config",
    "SmolVLAPolicy": "smolvla.policy",
    "make_pre_post_processors": "smolvla.processing",
    "sample_observation": "smolvla.processing",
    "unit_stats": "smolvla.processing",
    "SmolVLAError": "smolvla.errors",
    "Observation": "smolvla.model.vla",
    "load_policy": "smolvla.runtime.select",
}
__all__ = list(_EXPORTS)


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` that imports `exports[name]` (a module path) on first use of `name`."""

    def getattr_(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return getattr_


__getattr__ = lazy_exports("smolvla", _EXPORTS)
