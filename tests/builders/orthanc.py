"""A throw-away Orthanc PACS with its DICOMweb plugin, for tests: free loopback port, storage in a temp folder.

Debian/Ubuntu packages ``orthanc`` and ``orthanc-dicomweb`` (``scripts/install.sh`` installs them).
``LIBRA_ORTHANC`` names another Orthanc binary and ``LIBRA_ORTHANC_DICOMWEB`` another plugin file.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins", "/usr/local/share/orthanc/plugins",
               "/usr/lib/x86_64-linux-gnu/orthanc/plugins")


def orthanc_binary() -> str | None:
    env = os.environ.get("LIBRA_ORTHANC")
    if env:
        return env if os.path.isfile(env) and os.access(env, os.X_OK) else None
    return shutil.which("Orthanc")


def dicomweb_plugin() -> Path | None:
    env = os.environ.get("LIBRA_ORTHANC_DICOMWEB")
    if env:
        return Path(env) if Path(env).is_file() else None
    for d in PLUGIN_DIRS:
        for p in sorted(Path(d).glob("libOrthancDicomWeb.so*")) if Path(d).is_dir() else []:
            return p
    return None


def available() -> str:
    """"" when Orthanc and its DICOMweb plugin are installed, else what is missing."""
    if orthanc_binary() is None:
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; scripts/install.sh does it)"
    if dicomweb_plugin() is None:
        return "Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Orthanc:
    """``with Orthanc(tmp) as pacs:`` -> ``pacs.dicomweb`` is the DICOMweb root; stopped (and forgotten) on exit.

    ``users``: HTTP basic credentials to require ({} = no authentication).
    """

    def __init__(self, folder: str | Path, users: dict[str, str] | None = None) -> None:
        missing = available()
        if missing:
            raise RuntimeError(missing)
        self.folder = Path(folder)
        self.users = dict(users or {})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.proc: subprocess.Popen | None = None
        self.log = self.folder / "orthanc.log"

    def config(self) -> dict[str, Any]:
        return {
            "Name": "libra-test", "StorageDirectory": str(self.folder / "db"), "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.port, "DicomServerEnabled": False, "DicomPort": free_port(),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(self.users), "RegisteredUsers": self.users,
            "HttpDescribeErrors": True, "StorageCompression": False, "Plugins": [str(dicomweb_plugin())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": "127.0.0.1",
                         "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        }

    def start(self, timeout: float = 30.0) -> Orthanc:
        import requests

        self.folder.mkdir(parents=True, exist_ok=True)
        cfg = self.folder / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(orthanc_binary()), str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.folder)
        auth = next(iter(self.users.items()), None)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", auth=auth, timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Orthanc did not start within {timeout:.0f} s: {self.log.read_text()[-2000:]}")

    def upload(self, *paths: str | Path) -> None:
        """Store DICOM files byte for byte (Orthanc's REST API, not STOW: the files stay exactly as written)."""
        import requests

        auth = next(iter(self.users.items()), None)
        for p in paths:
            r = requests.post(f"{self.url}/instances", data=Path(p).read_bytes(), auth=auth, timeout=30)
            r.raise_for_status()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
