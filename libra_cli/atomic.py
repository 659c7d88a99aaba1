"""Atomic outputs: every file and folder libra writes (tables, answers, reports, checkpoints) goes through here.

A temp file or folder beside the target is renamed over it only when complete, so readers and
killed runs see the old output or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from libra_cli.errors import InputError, disk_error


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """A disk-full / read-only / permission error inside the block names ``path`` (what the user asked to write)."""
    try:
        yield
    except Exception as exc:
        named = disk_error(exc, path)
        if named is None:
            raise
        raise named from exc


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is fsynced and renamed over ``path``."""
    path = Path(path)
    with naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with naming(path):
            yield tmp_path
            if fsync:
                with open(tmp_path, "rb") as fh:
                    os.fsync(fh.fileno())
            os.chmod(tmp_path, 0o644)
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a whole text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_jsonl_atomic(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write a whole JSONL file atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------ whole outputs (files or folders)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale_temps(out: Path) -> None:
    """Remove temporary folders/files of earlier runs for ``out`` whose process is gone."""
    if not out.parent.is_dir():
        return
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        m = re.match(rf"\.{re.escape(out.name)}\.tmp-(\d+)-", p.name)
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def check_output(out: str | Path, force: bool, is_dir: bool = True, protect: tuple[str | Path | None, ...] = ()) -> Path:
    """Validate an output path before any work: refuse a non-empty one without ``force``, or one that
    overlaps an input (replacing it would delete the source)."""
    out = Path(out).expanduser().resolve()
    for p in protect:
        if not p:
            continue
        src = Path(p).expanduser().resolve()
        if not src.exists():
            continue
        if out == src or (src.is_dir() and out.is_relative_to(src) and is_dir) or src.is_relative_to(out):
            raise InputError(f"output {out} overlaps the input {src}; choose another output path")
    if out.exists():
        if is_dir and not out.is_dir():
            raise InputError(f"output {out} is a file; give a folder path")
        if not is_dir and out.is_dir():
            raise InputError(f"output {out} is a folder; give a file path")
        non_empty = out.is_file() or any(out.iterdir())
        if non_empty and not force:
            what = "folder is not empty" if is_dir else "file exists"
            raise InputError(f"output {out}: {what}; pass --force to replace it, or choose another path")
    if not out.parent.is_dir():
        raise InputError(f"the parent folder of {out} does not exist; create it first")
    return out


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM -> KeyboardInterrupt inside the block, so the temporary output is cleaned up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: Any) -> None:  # noqa: ARG001
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def atomic_output(out: Path, is_dir: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success move it into place (replacing ``out``).

    On any error or interrupt the temporary path is removed and ``out`` is left as it was.
    """
    _clean_stale_temps(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if is_dir:
        with naming(out):
            tmp.mkdir()
    try:
        with _terminate_as_interrupt(), naming(out):
            yield tmp
            _move_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is set aside first and restored if the rename fails."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.tmp-{os.getpid()}-old-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
