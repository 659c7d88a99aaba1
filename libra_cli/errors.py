"""User-facing errors: one line that says what is wrong and what to do.

``explain`` maps failures of the environment (out of memory, ...) that are not bugs to such a
line; the CLI and the web app both use it, so a user sees the same words everywhere.
"""

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


def is_oom(exc: BaseException) -> bool:
    """True for a GPU/CPU out-of-memory error (torch raises several types)."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def explain(exc: BaseException) -> str | None:
    """An actionable one-line message for an environment failure that is not a bug, else None."""
    if is_oom(exc):
        return (
            "out of memory: lower --batch-size / --max-new-tokens / --num-beams, use --dtype bfloat16, "
            "or load in 4-bit (--load-4bit)"
        )
    return None
