"""Errors of the data layer. Every message names the file, episode or feature at fault."""

from __future__ import annotations

from smolvla.errors import SmolVLAError


class DatasetError(SmolVLAError, ValueError):
    """A dataset on disk, or a frame given to the writer, is not what the LeRobot format allows."""


class VideoError(DatasetError):
    """A video file cannot be written, read, or does not hold the frames its metadata promises."""
