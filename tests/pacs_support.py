"""Shared by the PACS tests: when they may skip, the Orthanc server they start, and in-process CLI runs.

The PACS tests skip only when Orthanc (or the pacs extra) is missing AND they do not run under CI;
``.ci/run`` sets ``LIBRA_CI=1``, so there a missing Orthanc fails instead of skipping silently.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

CI = os.environ.get("LIBRA_CI") == "1"
PACKAGES = ("dicomweb_client", "highdicom", "fhir.resources", "pylibjpeg", "openjpeg")


def missing_packages() -> str:
    gone = [p for p in PACKAGES if importlib.util.find_spec(p) is None]
    return f"the pacs extra is not installed ({', '.join(gone)}): pip install -e '.[pacs]'" if gone else ""


def need(what: str) -> None:
    """Skip for ``what`` missing, except under CI (``LIBRA_CI=1``), where it is a failure."""
    if not what:
        return
    if CI:
        pytest.fail(f"{what}; CI (LIBRA_CI=1) runs the PACS tests, so scripts/install.sh must install it")
    pytest.skip(what)


def need_packages() -> None:
    need(missing_packages())


def need_orthanc() -> None:
    from tests.builders.orthanc import available

    need(missing_packages() or available())


@dataclass
class Pacs:
    """A running Orthanc loaded with the synthetic archive."""

    server: object
    archive: object

    @property
    def url(self) -> str:
        return self.server.dicomweb  # type: ignore[attr-defined]


@contextmanager
def loaded_orthanc(tmp: Path, users: dict[str, str] | None = None) -> Iterator[Pacs]:
    from tests.builders.dicom import synthetic_archive
    from tests.builders.orthanc import Orthanc

    need_orthanc()
    archive = synthetic_archive(tmp / "files")
    with Orthanc(tmp / "orthanc", users=users) as server:
        server.upload(*archive.files.values())
        yield Pacs(server, archive)


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """``libra ARGS`` in this process (as ``main`` runs it): (exit code, stdout, stderr)."""
    from libra_cli.cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


@contextmanager
def silent_server() -> Iterator[str]:
    """A DICOMweb URL whose server takes connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}/dicom-web"


@contextmanager
def trickling_server(interval: float = 0.2) -> Iterator[str]:
    """A DICOMweb URL whose server answers every request with a byte every ``interval`` seconds."""
    stop = threading.Event()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.1)

    def serve(conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nContent-Length: 100000\r\n\r\n[")
            while not stop.is_set():
                conn.sendall(b" ")
                time.sleep(interval)
        except OSError:
            pass
        finally:
            conn.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/dicom-web"
    finally:
        stop.set()
        t.join()
        sock.close()
