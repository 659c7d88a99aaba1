"""PACS in and out (docs/pacs.md): studies over DICOMweb, reports as FHIR R4 and DICOM SR.

By layer (tests/test_architecture.py):

- inputs: :mod:`~libra_cli.pacs.client` (QIDO-RS / WADO-RS / STOW-RS through dicomweb-client, with a total
  deadline and one-line errors), :mod:`~libra_cli.pacs.select` (which image of a study, which earlier study:
  pure functions of DICOM headers), :mod:`~libra_cli.pacs.study` (a study UID -> the chosen current and prior
  instances, fetched), :mod:`~libra_cli.pacs.fhir` and :mod:`~libra_cli.pacs.sr` (report writers),
  :mod:`~libra_cli.pacs.outputs` (``--fhir`` / ``--sr`` / ``--stow`` for one report);
- applications: :mod:`~libra_cli.pacs.batch` (``libra batch --dicomweb``: items for the batch runner, and the
  reports of a whole run).

Names of the inputs-layer modules are re-exported lazily (``pacs.batch`` is imported by its full name).
"""

from __future__ import annotations

from libra_cli.lazy import lazy_exports

_MODULES = {
    "client": ["DicomwebClient", "connect", "ServerError", "StudyError"],
    "select": ["Instance", "view_of", "choose_frontal", "choose_prior"],
    "study": ["Studies", "Resolved", "resolve", "open_study", "studies_since", "fetch_instance", "local_instance"],
    "fhir": ["diagnostic_report"],
    "sr": ["build_sr", "sr_findings"],
    "outputs": ["ReportTargets", "ReportSource", "page_records"],
}
__getattr__, __all__ = lazy_exports(__name__, {n: f"libra_cli.pacs.{m}" for m, names in _MODULES.items() for n in names})
