"""User-facing errors: one line that says what is wrong and what to do."""

from __future__ import annotations


class LibraError(Exception):
    """An error caused by the user's input or environment, shown without a traceback.

    The message must say what is wrong *and* what to do about it.
    """

    exit_code = 2


class InputError(LibraError):
    """A bad file, argument or value given by the user."""


class ModelLoadError(LibraError):
    """A checkpoint, tokenizer or encoder that cannot be found or read."""
