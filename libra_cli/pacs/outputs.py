"""``--fhir`` / ``--sr`` / ``--stow``: one report's FHIR DiagnosticReport and DICOM SR, written atomically, stored back.

:class:`ReportTargets` is checked before any work (so a wrong path fails in a second, not after the
model ran) and writes every requested output of one report; ``infer`` writes to files, ``batch`` to one
file per study in folders. :class:`ReportSource` is what a report describes: the current and prior
instances, from DICOMweb (:class:`~libra_cli.pacs.study.Resolved`) or from DICOM files on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libra_cli.atomic import atomic_path, write_text_atomic
from libra_cli.errors import InputError
from libra_cli.pacs.client import DicomwebClient
from libra_cli.pacs.select import Instance


@dataclass
class ReportSource:
    """The instances one report describes, and the server to store its SR on (``--stow``)."""

    current: Instance
    prior: Instance | None
    prior_note: str = ""
    client: DicomwebClient | None = None

    @classmethod
    def from_files(cls, current: str, prior: str | None) -> ReportSource:
        """Headers of DICOM files given on the command line (a one-line error for other files)."""
        from libra_cli.pacs.study import local_instance

        return cls(local_instance(current), local_instance(prior) if prior else None,
                   "" if prior else "no prior image given")

    @classmethod
    def from_study(cls, study: Any) -> ReportSource:
        """The instances of a :class:`~libra_cli.pacs.study.StudyInput` (or batch study) and its server."""
        res = study.resolved
        return cls(res.current, res.prior, res.note, study.client)


def _need(module: str, flag: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise InputError(f"{flag} needs the pacs extra: pip install 'libra-cli[pacs]' (docs/pacs.md)")


@dataclass
class ReportTargets:
    """Where the reports go: files (``infer``) or folders of ``<StudyInstanceUID>.json/.dcm`` (``batch``)."""

    fhir: Path | None = None
    sr: Path | None = None
    stow: bool = False
    folders: bool = False

    def wanted(self) -> bool:
        return bool(self.fhir or self.sr or self.stow)

    def check(self, dicomweb: bool) -> ReportTargets:
        """Refuse impossible targets before any work: --stow without a server, missing folders, a folder for a file."""
        if self.stow and not dicomweb:
            raise InputError("--stow stores the SR on the DICOMweb server the study came from; use it with --dicomweb")
        if self.fhir is not None:
            _need("fhir.resources", "--fhir")
        if self.sr is not None or self.stow:
            _need("highdicom", "--sr/--stow")
        if self.fhir is not None and self.fhir == self.sr:
            raise InputError("--fhir and --sr name the same path; give two")
        for flag, p in (("--fhir", self.fhir), ("--sr", self.sr)):
            if p is None:
                continue
            if self.folders:
                if p.exists() and not p.is_dir():
                    raise InputError(f"{flag} {p} is a file; batch writes one report per study into a folder")
                if not p.exists() and not p.parent.is_dir():
                    raise InputError(f"the parent folder of {flag} {p} does not exist; create it first")
            elif p.is_dir():
                raise InputError(f"{flag} {p} is a folder; give a file path")
            elif not p.parent.is_dir():
                raise InputError(f"the folder of {flag} {p} does not exist; create it first")
        return self

    def paths(self, name: str | None = None) -> tuple[Path | None, Path | None]:
        """(FHIR path, SR path) of one report (``name``: the study UID, for folders)."""
        if not self.folders:
            return self.fhir, self.sr
        return (self.fhir / f"{name}.json" if self.fhir else None, self.sr / f"{name}.dcm" if self.sr else None)

    def complete(self, name: str) -> bool:
        """Whether the files of ``name`` are there (batch resume; --stow is tracked by the batch's report log)."""
        return all(p is None or p.is_file() for p in self.paths(name))

    def write(self, text: str, source: ReportSource, *, model: str, revision: str | None,
              name: str | None = None) -> dict[str, Any]:
        """Write (and store) one report; returns what was done. A refused STOW is returned as ``stow_error``."""
        from libra_cli.pacs.fhir import diagnostic_report
        from libra_cli.pacs.sr import build_sr

        fhir_path, sr_path = self.paths(name)
        done: dict[str, Any] = {}
        if fhir_path is not None:
            doc = diagnostic_report(text, source.current, source.prior, model=model, revision=revision,
                                    prior_note=source.prior_note)
            done["fhir"] = str(write_text_atomic(fhir_path, doc + "\n"))
        if sr_path is None and not self.stow:
            return done
        sr = build_sr(text, source.current, source.prior, model=model, revision=revision, prior_note=source.prior_note)
        done.update(sr_instance=str(sr.SOPInstanceUID), sr_series=str(sr.SeriesInstanceUID))
        if sr_path is not None:
            from pydicom import dcmwrite

            with atomic_path(sr_path) as tmp:
                dcmwrite(tmp, sr, enforce_file_format=True)
            done["sr"] = str(sr_path)
        if self.stow:
            if source.client is None:  # pragma: no cover - check() refuses --stow without a server
                raise InputError("--stow needs --dicomweb")
            try:
                source.client.store([sr])
                done["stored"] = (f"{source.client.url}/studies/{sr.StudyInstanceUID}/series/{sr.SeriesInstanceUID}"
                                  f"/instances/{sr.SOPInstanceUID}")
            except InputError as exc:
                done["stow_error"] = str(exc)
        return done


def describe(done: dict[str, Any]) -> list[str]:
    """Lines for stderr: what :meth:`ReportTargets.write` wrote and stored."""
    lines = []
    if "fhir" in done:
        lines.append(f"FHIR DiagnosticReport (preliminary, AI-generated draft): {done['fhir']}")
    if "sr" in done:
        lines.append(f"DICOM SR (AI-generated draft, research use only): {done['sr']}")
    if "stored" in done:
        lines.append(f"SR stored on the server (STOW-RS): {done['stored']}")
    return lines


def page_records(folder: Path, text: str, current: str, prior: str | None, model: str, revision: str | None
                 ) -> tuple[str | None, str | None]:
    """The web page's FHIR and SR downloads: both when the uploads are DICOM files (and the pacs extra is
    installed), (None, None) for JPEG/PNG uploads, which name no study to link to."""
    import importlib.util
    import uuid

    if importlib.util.find_spec("highdicom") is None or importlib.util.find_spec("fhir.resources") is None:
        return None, None
    try:
        source = ReportSource.from_files(current, prior)
    except InputError:
        return None, None
    stem = f"libra-report-{uuid.uuid4().hex[:12]}"
    done = ReportTargets(Path(folder) / f"{stem}.fhir.json", Path(folder) / f"{stem}.sr.dcm").write(
        text, source, model=model, revision=revision)
    return done.get("fhir"), done.get("sr")
