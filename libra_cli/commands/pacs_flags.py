"""Flag groups for PACS input and report output (docs/pacs.md), shared by ``infer`` and ``batch``.

Like :mod:`libra_cli.commands.options` (same :func:`~libra_cli.commands.options.with_flags` mechanism): one
definition per flag; ``infer`` leaves out the batch-only ones and ``batch`` the infer-only one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from libra_cli.errors import InputError

PACS = "PACS: DICOMweb in, FHIR / DICOM SR out (docs/pacs.md)"


@dataclass
class DicomwebFlags:
    """Studies from a DICOMweb server (QIDO-RS / WADO-RS), the prior found for each."""

    dicomweb: Annotated[str | None, typer.Option("--dicomweb", envvar="LIBRA_DICOMWEB", help="DICOMweb service root, e.g. http://localhost:8042/dicom-web (credentials: LIBRA_DICOMWEB_TOKEN, or LIBRA_DICOMWEB_USER and LIBRA_DICOMWEB_PASSWORD).", rich_help_panel=PACS)] = None
    study: Annotated[str | None, typer.Option("--study", help="StudyInstanceUID of the study to report (its frontal CR/DX image is the current image).", rich_help_panel=PACS)] = None
    studies: Annotated[Path | None, typer.Option("--studies", help="File of StudyInstanceUIDs, one per line; an optional second column is that study's prior (a UID, auto or none).", rich_help_panel=PACS)] = None
    since: Annotated[str | None, typer.Option("--since", help="Every study from this date on (YYYY-MM-DD) with a --modality image.", rich_help_panel=PACS)] = None
    prior_study: Annotated[str | None, typer.Option("--prior", help="auto: the most recent earlier study of the patient with a frontal image; none: the current image is the prior; or a StudyInstanceUID.", rich_help_panel=PACS)] = None
    modality: Annotated[str, typer.Option("--modality", help="Modalities whose images are used (comma-separated).", rich_help_panel=PACS)] = "CR,DX"
    dicomweb_timeout: Annotated[float | None, typer.Option("--dicomweb-timeout", help="Seconds the whole DICOMweb exchange of a study may take (default 120, LIBRA_DICOMWEB_TIMEOUT).", rich_help_panel=PACS)] = None

    def modalities(self) -> tuple[str, ...]:
        mods = tuple(m.strip().upper() for m in self.modality.split(",") if m.strip())
        if not mods or not all(m.isalnum() and len(m) <= 16 for m in mods):
            raise InputError(f"--modality {self.modality!r} is not a comma-separated list of modalities, e.g. CR,DX")
        return mods

    def _url(self, what: str) -> str:
        if not self.dicomweb:
            raise InputError(f"{what} reads studies from a DICOMweb server: give --dicomweb URL (or LIBRA_DICOMWEB)")
        return self.dicomweb

    def open_study(self, say: Callable[[str], None], images_given: bool) -> Any:
        """``infer --study``: the study and its prior, fetched (None without --study); prints what was used."""
        if self.study is None:
            if self.prior_study is not None:
                raise InputError("--prior picks the prior on the DICOMweb server; use it with --study (for files, "
                                 "give the prior image as the second argument)")
            return None
        if images_given:
            raise InputError("--study reads the images from the DICOMweb server; drop the image arguments / --example")
        from libra_cli.pacs.study import open_study

        study = open_study(self._url("--study"), self.study, self.prior_study, self.modalities(),
                           self.dicomweb_timeout)
        for line in study.resolved.lines():
            say(line)
        return study

    def batch_wanted(self) -> bool:
        if self.studies is None and self.since is None:
            if self.prior_study is not None:
                raise InputError("--prior applies to --dicomweb with --studies or --since")
            return False
        self._url("--studies/--since")
        return True


@dataclass
class ReportFlags:
    """Reports a clinical system can file: FHIR DiagnosticReport, DICOM SR, and the SR stored back."""

    fhir: Annotated[Path | None, typer.Option("--fhir", help="Also write a FHIR R4 DiagnosticReport (preliminary, AI-generated draft) here; batch: a folder, one STUDY_UID.json per study. Needs DICOM input.", rich_help_panel=PACS)] = None
    sr: Annotated[Path | None, typer.Option("--sr", help="Also write a DICOM Structured Report referencing the source images here; batch: a folder, one STUDY_UID.dcm per study. Needs DICOM input.", rich_help_panel=PACS)] = None
    stow: Annotated[bool, typer.Option("--stow", help="Store the SR on the --dicomweb server, in the current study (STOW-RS).", rich_help_panel=PACS)] = False

    def targets(self, folders: bool, dicomweb: bool) -> Any:
        """The checked :class:`~libra_cli.pacs.outputs.ReportTargets` (before any work)."""
        from libra_cli.pacs.outputs import ReportTargets

        return ReportTargets(self.fhir, self.sr, self.stow, folders).check(dicomweb)
