"""The interpreter of LeRobot's environment, shared by the interop tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

LEROBOT_PYTHON_ENV = "SMOLVLA_LEROBOT_PYTHON"


@pytest.fixture(scope="session")
def lerobot_python() -> str:
    """LeRobot's interpreter; a fixture, so that a missing or broken one shows up at setup."""
    python = os.environ.get(LEROBOT_PYTHON_ENV)
    if not python:
        pytest.skip(
            f"{LEROBOT_PYTHON_ENV} is not set: it names the python of an environment with "
            "lerobot[smolvla]==0.6.1 (see ../shared/tools/lerobot_reference/make_lerobot_env.sh)"
        )
    if not (Path(python).is_file() and os.access(python, os.X_OK)):
        pytest.fail(f"{LEROBOT_PYTHON_ENV}={python!r} is not an executable file")
    return python
