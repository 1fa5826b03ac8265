"""The one base class of smolvla's errors.

Every error smolvla raises because of its input (a flag, a config, a checkpoint, a dataset, a message)
is a `SmolVLAError`: its text names the field, the value and what was expected, so the command line
prints it as one line. Anything else (a bug, torch's own RuntimeError) is not one, and keeps its
traceback. Subclasses also derive from the builtin that fits (ValueError, FileNotFoundError,
RuntimeError), so `except ValueError` in users' code keeps working.
"""

from __future__ import annotations


class SmolVLAError(Exception):
    """Bad input or an unmet requirement, explained in the message."""


class MissingFileError(SmolVLAError, FileNotFoundError):
    """A file the input names (a checkpoint's config, a tokenizer, a processor's stats) is not there."""
