"""Reading record files: a JSON array or JSON Lines, whatever the file is called.

Batch questions, eval references/predictions and training data all come as "a list of objects";
users name JSONL files ``.json`` and the reverse, so the content decides, and every record keeps
its line number for error messages.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from libra_cli.errors import InputError


def read_text(path: str | Path, what: str = "file") -> str:
    """The file's text (UTF-8, BOM dropped); a missing file is a one-line error."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} '{p}' does not exist; check the path")
    return p.read_text(encoding="utf-8-sig")


def is_json_array(text: str) -> bool:
    return text.lstrip().startswith("[")


def iter_records(path: str | Path, what: str = "file", text: str | None = None) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` for a JSON array or a JSONL file.

    A JSONL line that is not valid JSON yields ``(line, ValueError)`` so callers can report it and go on;
    a broken JSON array is one error for the whole file (there is nothing to go on with).
    """
    p = Path(path)
    raw = read_text(p, what) if text is None else text
    if is_json_array(raw):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(f"{what} {p} is not valid JSON ({exc.msg} at line {exc.lineno}); fix it or use JSONL") from exc
        yield from ((i + 1, rec) for i, rec in enumerate(data))
        return
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, ValueError(exc.msg)


def read_records(path: str | Path, what: str = "file") -> list[Any]:
    """Every record of a JSON array or JSONL file; the first bad JSONL line is a one-line error."""
    out = []
    for lineno, rec in iter_records(path, what):
        if isinstance(rec, ValueError):
            raise InputError(f"{what} {path}: line {lineno} is not valid JSON ({rec}); fix the file")
        out.append(rec)
    return out
