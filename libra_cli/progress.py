"""The one progress-bar layout of every long libra job: label, bar, done/total, rate, elapsed, ETA."""

from __future__ import annotations

from typing import Any


def progress_bar(console: Any, label: str, unit: str = "", transient: bool = False) -> Any:
    """A rich ``Progress``; set the task field ``rate`` to show throughput (e.g. "3.2 samples/s")."""
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
    return Progress(*columns, console=console, transient=transient)
