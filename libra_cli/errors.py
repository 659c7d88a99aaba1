"""User-facing errors: one line that says what is wrong and what to do.

``explain`` maps failures of the environment (out of memory, ...) that are not bugs to such a
line; the CLI and the web app both use it, so a user sees the same words everywhere.
"""

from __future__ import annotations

import errno
import os


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


_DISK = {
    errno.ENOSPC: ("no space left on the device", "free some space or write somewhere else"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write somewhere else"),
    errno.EROFS: ("the file system is read-only", "write somewhere else (e.g. --out)"),
    errno.EACCES: ("permission denied", "check the permissions or write somewhere else"),
    errno.EPERM: ("operation not permitted", "check the permissions or write somewhere else"),
}
_DISK_TEXT = {"No space left on device": errno.ENOSPC, "Read-only file system": errno.EROFS,
              "Disk quota exceeded": errno.EDQUOT, "Permission denied": errno.EACCES}


def disk_error(exc: BaseException, path: str | os.PathLike[str] | None = None) -> OSError | None:
    """An OSError for a full / read-only / forbidden destination naming ``path`` (the output the user asked
    for, not a hidden temp file), or None when ``exc`` is something else."""
    errno_ = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    # writers with their own error types (safetensors, pyarrow) report the OS error in their message
    code = errno_ if errno_ in _DISK else next((c for t, c in _DISK_TEXT.items() if t in str(exc)), None)
    if code is None:
        return None
    filename = getattr(exc, "filename", None) if isinstance(exc, OSError) else None
    return OSError(code, os.strerror(code), str(path) if path is not None else filename)


def explain(exc: BaseException) -> tuple[str, int] | None:
    """``(one-line message, exit code)`` for an environment failure that is not a bug, else None."""
    if is_oom(exc):
        return (
            "out of memory: lower --batch-size / --max-new-tokens / --num-beams, use --dtype bfloat16, "
            "or load in 4-bit (--load-4bit)", 1)
    disk = disk_error(exc)
    if disk is not None:
        what, fix = _DISK[disk.errno]
        where = f" while writing {disk.filename}" if disk.filename else ""
        return f"{what}{where}; {fix}", 2
    return None
