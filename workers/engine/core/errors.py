"""Exceptions the engine raises. Every message is in words and names the thing at fault.

Callers outside the engine (the Celery task, the management commands, the API) catch ``EngineError``
and show ``str(error)`` to a person, so a message must say what is wrong and, where one exists, the
command or setting that fixes it.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class ModelStoreError(EngineError):
    """A model is missing from the store, a file is missing or fails its sha256, or a fetch failed."""


class UnknownPipelineError(EngineError):
    """A pipeline name that no registered builder answers to."""


class ConfigError(EngineError):
    """A pipeline or generator config with an unknown key or a value out of range."""


class BadInputError(EngineError):
    """An image, mask, prompt or expression the engine cannot work on."""


class CancelledError(EngineError):
    """The work was cancelled while it ran (``workers.engine.core.meter.checkpoint`` found the flag set)."""
