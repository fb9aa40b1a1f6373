"""The error of a weight file that is not there (its own module: the registry and the CLIP lookup both raise it)."""

from __future__ import annotations

from curate.config import ConfigError


class ModelMissing(ConfigError):
    """A weight file is not available; the message names the file and how to get it."""
