"""A DICOMweb server through dicomweb-client: QIDO-RS, WADO-RS and STOW-RS with a total deadline and one-line errors.

Credentials come from the environment, never from the command line (it lands in shell histories and
process lists): ``LIBRA_DICOMWEB_TOKEN`` (sent as ``Authorization: Bearer``) or ``LIBRA_DICOMWEB_USER`` +
``LIBRA_DICOMWEB_PASSWORD`` (HTTP basic). Each thread gets its own HTTP session (batch workers fetch in
parallel), and every request made inside :meth:`DicomwebClient.deadline` shares one total deadline: a
server that stops answering, or answers a byte at a time, cannot hold a run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from libra_cli.errors import InputError

ENV_TOKEN = "LIBRA_DICOMWEB_TOKEN"
ENV_USER = "LIBRA_DICOMWEB_USER"
ENV_PASSWORD = "LIBRA_DICOMWEB_PASSWORD"
ENV_TIMEOUT = "LIBRA_DICOMWEB_TIMEOUT"
DEFAULT_TIMEOUT = 120.0
CONNECT_TIMEOUT = 10.0
CHUNK = 1 << 16
# WADO-RS: the instance as stored (no transcoding by the server), so it decodes exactly like the same file on disk
AS_STORED = (("application/dicom", "*"),)
T = TypeVar("T")


class ServerError(InputError):
    """The server cannot be used at all (down, refusing, too slow, wrong credentials): a batch stops here."""


class StudyError(InputError):
    """One study cannot be used (not on the server, no frontal image, unreadable): a batch records it, goes on."""


def _requests() -> Any:
    try:
        import dicomweb_client  # noqa: F401
        import requests
    except ImportError as exc:
        raise InputError("DICOMweb needs the pacs extra: pip install 'libra-cli[pacs]' (docs/pacs.md)") from exc
    return requests


class _Deadline(Exception):
    """The operation's total time is spent (raised inside the session, mapped to a :class:`ServerError`)."""


@functools.cache
def _session_class() -> type:
    requests = _requests()

    class DeadlineSession(requests.Session):
        """A session (one per thread) whose requests stop at its deadline, the body included (read as it arrives)."""

        deadline: float | None = None

        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            if self.deadline is None:
                return super().request(method, url, *args, **kwargs)
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise _Deadline()
            kwargs["timeout"] = (min(CONNECT_TIMEOUT, left), left)
            kwargs["stream"] = True
            resp = super().request(method, url, *args, **kwargs)
            read = getattr(resp.raw, "read1", None) or resp.raw.read  # read1: whatever one socket read gives
            parts = []
            try:
                while chunk := read(CHUNK, decode_content=True):
                    parts.append(chunk)
                    if time.monotonic() > self.deadline:
                        raise _Deadline()
            except BaseException:
                resp.close()
                raise
            # the body is read: hand it to requests as if it had read it (dicomweb-client uses .content/.json())
            resp._content = b"".join(parts)
            resp._content_consumed = True
            return resp

    return DeadlineSession


def timeout_from_env(value: float | None = None) -> float:
    """The total deadline in seconds: ``value``, else ``LIBRA_DICOMWEB_TIMEOUT``, else 120."""
    if value is not None:
        if value <= 0:
            raise InputError("--dicomweb-timeout must be a positive number of seconds")
        return float(value)
    try:
        t = float(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT))
    except ValueError as exc:
        raise InputError(f"{ENV_TIMEOUT} must be a number of seconds") from exc
    if t <= 0:
        raise InputError(f"{ENV_TIMEOUT} must be a positive number of seconds")
    return t


def _auth_headers() -> dict[str, str]:
    token = os.environ.get(ENV_TOKEN)
    if token:
        return {"Authorization": f"Bearer {token}"}
    return {}


def _reason(exc: BaseException) -> str:
    """'Connection refused' out of urllib3's nested message."""
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    return m.group(1).strip() if m else type(exc).__name__


class DicomwebClient:
    """One DICOMweb service (its base URL, e.g. ``http://pacs:8042/dicom-web``)."""

    def __init__(self, url: str, timeout: float | None = None) -> None:
        url = (url or "").strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            raise InputError(f"--dicomweb {url!r} is not an http(s) URL; give the service root, e.g. "
                             "http://localhost:8042/dicom-web")
        self.url = url
        self.timeout = timeout_from_env(timeout)
        self._local = threading.local()
        _requests()

    # -- plumbing ----------------------------------------------------------------------------------
    def _client(self) -> Any:
        c = getattr(self._local, "client", None)
        if c is None:
            from dicomweb_client.api import DICOMwebClient

            session = _session_class()()
            user, password = os.environ.get(ENV_USER), os.environ.get(ENV_PASSWORD)
            if user and not os.environ.get(ENV_TOKEN):
                session.auth = (user, password or "")
            c = DICOMwebClient(self.url, session=session, headers=_auth_headers(),
                               timeout=(CONNECT_TIMEOUT, self.timeout))
            c.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=100)
            self._local.client, self._local.session = c, session
        return c

    @contextlib.contextmanager
    def deadline(self, seconds: float | None = None) -> Iterator[None]:
        """Every request of this thread inside the block ends by one deadline (nested blocks keep the outer one)."""
        self._client()
        session = self._local.session
        if session.deadline is not None:
            yield
            return
        session.deadline = time.monotonic() + (seconds if seconds is not None else self.timeout)
        try:
            yield
        finally:
            session.deadline = None

    def _call(self, what: str, fn: Callable[[], T], study_specific: bool = True) -> T | None:
        """Run one request; None for 404 (the caller says what was missing); one-line errors for the rest."""
        requests = _requests()
        try:
            with self.deadline():
                return fn()
        except InputError:
            raise
        except (_Deadline, requests.exceptions.Timeout) as exc:
            raise ServerError(f"the DICOMweb server {self.url} did not answer {what} within {self.timeout:g} s "
                              "(--dicomweb-timeout, LIBRA_DICOMWEB_TIMEOUT); check the server or allow more time") from exc
        except requests.exceptions.ConnectionError as exc:
            raise ServerError(f"cannot reach the DICOMweb server {self.url} ({_reason(exc)}); check --dicomweb and "
                              "that the server is running") from exc
        except requests.exceptions.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code == 404:
                return None
            if code in (401, 403):
                raise ServerError(f"the DICOMweb server {self.url} refused {what} (HTTP {code}); set {ENV_TOKEN}, or "
                                  f"{ENV_USER} and {ENV_PASSWORD} (docs/pacs.md)") from exc
            err = StudyError if study_specific and code < 500 else ServerError
            raise err(f"the DICOMweb server {self.url} answered HTTP {code} to {what}; check the server's log") from exc
        except Exception as exc:  # noqa: BLE001 - dicomweb-client/pydicom raise many types for a bad answer
            raise StudyError(f"the DICOMweb server {self.url} sent an unreadable answer to {what} "
                             f"({type(exc).__name__}: {exc}); check the server") from exc

    # -- QIDO-RS -----------------------------------------------------------------------------------
    def ping(self) -> None:
        """One cheap query, so a wrong URL, a server that is down or refused credentials fail before any work."""
        self._call("a study query", lambda: self._client().search_for_studies(limit=1), study_specific=False)

    def search_studies(self, filters: dict[str, str], fields: Sequence[str] = ()) -> list[dict[str, Any]]:
        """QIDO-RS studies matching ``filters``, every page, as DICOM JSON.

        Pages are asked for by offset until one brings no study not seen yet: a server that ignores the
        offset (Orthanc 1.10 does with some filters) ends the loop instead of repeating a page forever.
        """
        found: dict[str, dict[str, Any]] = {}
        offset = 0
        while True:
            page = self._call(f"a study query ({', '.join(filters)})", lambda o=offset: self._client().search_for_studies(
                search_filters=filters, fields=list(fields) or None, offset=o or None), study_specific=False) or []
            new = {str((d.get("0020000D") or {}).get("Value", [""])[0]): d for d in page}
            new = {k: v for k, v in new.items() if k and k not in found}
            if not new:
                return list(found.values())
            found.update(new)
            offset += len(page)

    # -- WADO-RS -----------------------------------------------------------------------------------
    def study_metadata(self, study_uid: str) -> list[Any]:
        """Every instance header of a study (WADO-RS metadata, bulk data left out) as pydicom Datasets; [] if none."""
        from pydicom.dataset import Dataset

        res = self._call(f"the metadata of study {study_uid}",
                         lambda: self._client().retrieve_study_metadata(study_uid))
        return [Dataset.from_json(_strip_bulk(d)) for d in res or []]

    def instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Any:
        """The whole instance as stored (pixel data included), as a pydicom Dataset."""
        what = f"instance {sop_uid} (series {series_uid})"
        ds = self._call(what, lambda: self._client().retrieve_instance(study_uid, series_uid, sop_uid,
                                                                       media_types=AS_STORED))
        if ds is None:
            raise StudyError(f"{what} of study {study_uid} is not on the DICOMweb server {self.url} (HTTP 404)")
        if str(getattr(ds, "SOPInstanceUID", "")) != sop_uid:
            raise StudyError(f"the DICOMweb server {self.url} sent another instance for {what}; check the server")
        return ds

    # -- STOW-RS -----------------------------------------------------------------------------------
    def store(self, datasets: Sequence[Any]) -> None:
        """Store instances (STOW-RS); a one-line error when the server refuses any of them."""
        what = "the store request (STOW-RS)"
        res = self._call(what, lambda: self._client().store_instances(list(datasets)), study_specific=False)
        failed = getattr(res, "FailedSOPSequence", None) if res is not None else None
        if res is None or failed:
            reason = f"failure reason {failed[0].get('FailureReason', '?')}" if failed else "HTTP 404"
            raise ServerError(f"the DICOMweb server {self.url} did not store the report ({reason}); check that it "
                              "accepts STOW-RS and Comprehensive SR")


def _strip_bulk(d: dict[str, Any]) -> dict[str, Any]:
    """DICOM JSON without BulkDataURI values (pixel data), sequences included: headers are all we read."""
    out: dict[str, Any] = {}
    for tag, el in d.items():
        if not isinstance(el, dict) or "BulkDataURI" in el:
            continue
        if el.get("vr") == "SQ" and isinstance(el.get("Value"), list):
            el = {**el, "Value": [_strip_bulk(v) for v in el["Value"] if isinstance(v, dict)]}
        out[tag] = el
    return out


def connect(url: str, timeout: float | None = None, check: bool = True) -> DicomwebClient:
    """A client for ``url``; with ``check``, one query first so a dead server fails at once."""
    client = DicomwebClient(url, timeout)
    if check:
        client.ping()
    return client
