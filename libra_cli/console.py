"""Console helpers: the stderr console, one-time warnings, quiet third-party libraries, progress bars.

stdout is for data (reports, JSON, paths); everything here writes to stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

_warned: set[str] = set()


def err_console(**kwargs: Any) -> Any:
    """A rich console on stderr (soft-wrapped: long paths and messages stay on one line)."""
    from rich.console import Console

    kwargs.setdefault("soft_wrap", True)
    return Console(stderr=True, **kwargs)


def warn_once(key: str, message: str) -> None:
    """Print a warning once per process (e.g. a template mismatch)."""
    if key in _warned:
        return
    _warned.add(key)
    from rich.markup import escape

    err_console().print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


_verbose = False

# Notices that ask nothing of the user, and where they come from (shown with --verbose):
# bitsandbytes (installed by the quant extra) tries a hub kernel on every import on a bf16 CPU and logs that it
# could not fetch it offline; `kernels` logs that it skipped a trust check it was not asked to make; peft warns
# at every adapter save when the base is a name it cannot open (`--model demo`), though the vocabulary is known.
QUIET_LOGGERS = ("bitsandbytes", "kernels")
QUIET_WARNINGS = (
    (UserWarning, r"Could not find a config file in .* will assume that the vocabulary was not modified"),
    (FutureWarning, ""),
)


def set_verbose(on: bool) -> None:
    """``--verbose`` / ``--debug``: show third-party notices as they come."""
    global _verbose
    _verbose = on


def verbose() -> bool:
    return _verbose or os.environ.get("LIBRA_DEBUG") == "1"


def quiet_third_party() -> None:
    """Silence the notices in :data:`QUIET_LOGGERS` / :data:`QUIET_WARNINGS` (cheap: no imports); the CLI
    calls it once at start, before any library loads."""
    if verbose():
        return
    import logging

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category, message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


@contextlib.contextmanager
def package_prints() -> Iterator[None]:
    """What a package prints on stdout (radgraph's "Using device", PyRuSH's tokens) never reaches stdout,
    which is data: it goes to stderr with --verbose / --debug and nowhere otherwise."""
    if verbose():
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def quiet_transformers() -> None:
    """Keep third-party chatter (progress bars, deprecation notes) out of the CLI unless --verbose / --debug."""
    if verbose():
        return
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass


def progress_bar(console: Any, label: str, unit: str = "", transient: bool = False, disable: bool = False) -> Any:
    """The one progress-bar layout of every long job: label, bar, done/total, rate, elapsed, ETA.

    Set the task field ``rate`` to show throughput (e.g. "3.2 samples/s").
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    columns += [TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=transient, disable=disable)


def third_party_logs_to_stderr() -> None:
    """Loggers that libraries point at stdout (DeepSpeed's) write to stderr: stdout is for data."""
    import logging
    import sys

    for name in ("DeepSpeed",):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stdout:
                handler.setStream(sys.stderr)
