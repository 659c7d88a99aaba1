"""Image URLs: fetched with a total deadline and a size cap, so a slow or huge server cannot hold a run.

``LIBRA_URL_TIMEOUT`` (seconds for the whole download, default 60) and ``LIBRA_URL_MAX_MB`` (default 200)
change the limits.
"""

from __future__ import annotations

import os
import time

from libra_cli.errors import InputError

CHUNK = 1 << 16


def limits() -> tuple[float, int]:
    """(total seconds, max bytes) from the environment, checked."""
    try:
        timeout = float(os.environ.get("LIBRA_URL_TIMEOUT", "60"))
        max_mb = float(os.environ.get("LIBRA_URL_MAX_MB", "200"))
    except ValueError as exc:
        raise InputError("LIBRA_URL_TIMEOUT and LIBRA_URL_MAX_MB must be numbers (seconds, megabytes)") from exc
    return timeout, int(max_mb * 1e6)


def fetch(url: str) -> bytes:
    """The body of ``url``; a one-line error past the deadline, past the size cap, or on any network failure."""
    import urllib.request

    timeout, max_bytes = limits()
    deadline = time.monotonic() + timeout
    try:
        # the socket timeout bounds each read; the deadline bounds the whole download
        with urllib.request.urlopen(url, timeout=min(timeout, 30)) as resp:  # noqa: S310 - user-given image URL
            declared = int(resp.headers.get("Content-Length") or 0)
            if declared > max_bytes:
                raise InputError(f"image {url} is {declared / 1e6:.0f} MB, over the {max_bytes / 1e6:.0f} MB limit "
                                 "(LIBRA_URL_MAX_MB)")
            parts, got = [], 0
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                _read_timeout(resp, remaining)  # a read never waits past the deadline (a server dripping bytes)
                chunk = resp.read1(CHUNK) if hasattr(resp, "read1") else resp.read(CHUNK)
                if not chunk:
                    return b"".join(parts)
                got += len(chunk)
                if got > max_bytes:
                    raise InputError(f"image {url} is over the {max_bytes / 1e6:.0f} MB limit (LIBRA_URL_MAX_MB)")
                parts.append(chunk)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any network failure is a user-facing input problem
        if time.monotonic() >= deadline - 0.05 and isinstance(exc, TimeoutError | OSError):
            raise InputError(f"image {url} took longer than {timeout:.0f} s to download (LIBRA_URL_TIMEOUT); "
                             "try again or download it first") from None
        raise InputError(f"cannot download image {url}: {exc}") from exc


def _read_timeout(resp: object, seconds: float) -> None:
    """Bound the next socket read of an ``http.client`` response (plain or TLS socket)."""
    sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.01))
