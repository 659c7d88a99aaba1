"""The findings as a FHIR R4 ``DiagnosticReport`` (built and validated with fhir.resources), a draft for research.

FHIR R4 (4.0.1) and R4B (4.3.0) define ``DiagnosticReport``, ``Device`` and ``Provenance`` alike;
fhir.resources ships R4B models (its R4 models need pydantic 1), so the report is validated with those.

What the report says (docs/pacs.md#fhir):

- ``status`` ``preliminary``; ``meta.security`` ``AIAST`` (HL7 "Artificial Intelligence asserted");
  the narrative, the code's text and the attachment's title say "AI-generated draft, research use only";
- the findings text as a ``text/plain`` ``presentedForm`` attachment and in the narrative;
- ``imagingStudy``: the current study (and the prior compared with it) by StudyInstanceUID
  (``urn:dicom:uid`` / ``urn:oid:...``); ``basedOn`` the order by AccessionNumber; ``subject`` by PatientID;
- the model and its revision as a contained ``Device``, linked by a contained ``Provenance`` (author).
"""

from __future__ import annotations

import base64
import html
import uuid
from datetime import UTC, datetime
from typing import Any

from libra_cli.pacs.select import Instance

NOTICE = ("AI-generated draft (Libra), research use only: not for clinical decisions; "
          "a radiologist must review every finding.")
DICOM_UID = "urn:dicom:uid"
_NS = uuid.UUID("3f2b0d4e-8a51-4c1f-9a0e-5d7c2b9e1f42")


def report_id(*parts: str) -> str:
    """A stable id for the same report of the same images by the same model (a rerun replaces, never duplicates)."""
    return str(uuid.uuid5(_NS, "\x1f".join(parts)))


def _fhir_datetime(im: Instance) -> str | None:
    """StudyDate (+ StudyTime with its UTC offset when the header has one: FHIR wants a zone with a time)."""
    d = im.study_date
    if len(d) != 8 or not d.isdigit():
        return None
    date = f"{d[:4]}-{d[4:6]}-{d[6:]}"
    tz = str(im.header.get("TimezoneOffsetFromUTC", "") if im.header is not None else "").strip()
    t = im.study_time
    if t and len(tz) == 5 and tz[0] in "+-" and tz[1:].isdigit():
        return f"{date}T{t[:2]}:{t[2:4]}:{t[4:6]}{tz[:3]}:{tz[3:]}"
    return date


def _study_ref(im: Instance, display: str) -> dict[str, Any]:
    return {"type": "ImagingStudy", "identifier": {"system": DICOM_UID, "value": f"urn:oid:{im.study}"},
            "display": display}


def _header(im: Instance, keyword: str) -> str:
    return str(im.header.get(keyword, "") if im.header is not None else "").strip()


def diagnostic_report(text: str, current: Instance, prior: Instance | None, *, model: str, revision: str | None,
                      prior_note: str = "", issued: datetime | None = None) -> str:
    """The DiagnosticReport as FHIR JSON (validated by fhir.resources; a ValueError if it were not valid)."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    from libra_cli import __version__

    issued = (issued or datetime.now(UTC)).isoformat(timespec="seconds")
    rid = report_id(current.study, current.sop, prior.sop if prior else "", model, revision or "", text)
    prior_line = (f"Prior study {prior.study} (compared)." if prior is not None
                  else f"No prior study: {prior_note or 'the current image was used as the prior'}.")
    narrative = (f'<div xmlns="http://www.w3.org/1999/xhtml"><p><b>{html.escape(NOTICE)}</b></p>'
                 f"<p>{html.escape(text)}</p><p>Model {html.escape(model)}, revision "
                 f"{html.escape(revision or 'unspecified')}. {html.escape(prior_line)}</p></div>")
    device = {"resourceType": "Device", "id": "libra-model",
              "deviceName": [{"name": model, "type": "model-name"}],
              "version": [{"type": {"text": "model revision"}, "value": revision or "unspecified"},
                          {"type": {"text": "libra"}, "value": __version__}],
              "type": {"text": "AI report generation model (Libra, temporal chest X-ray)"},
              "note": [{"text": NOTICE}]}
    sources = [current] + ([prior] if prior is not None else [])
    provenance = {"resourceType": "Provenance", "id": "generated-by", "target": [{"reference": "#"}],
                  "recorded": issued,
                  "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                           "code": "CREATE"}]},
                  "agent": [{"type": {"coding": [{
                      "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                      "code": "author"}]}, "who": {"reference": "#libra-model"}}],
                  "entity": [{"role": "source", "what": _study_ref(im, "source study")} for im in sources]}
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                               "code": "AIAST", "display": "Artificial Intelligence asserted"}]},
        "text": {"status": "generated", "div": narrative},
        "contained": [device, provenance],
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{rid}"}],
        "status": "preliminary",
        "category": [{"coding": [{"system": "http://loinc.org", "code": "LP29684-5", "display": "Radiology"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}],
                 "text": "Chest X-ray findings: AI-generated draft, research use only"},
        "issued": issued,
        "imagingStudy": [_study_ref(current, "current study")]
        + ([_study_ref(prior, "prior study (comparison)")] if prior is not None and prior.study != current.study else []),
        "presentedForm": [{"contentType": "text/plain; charset=utf-8", "language": "en",
                           "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
                           "title": "Findings: AI-generated draft, research use only", "creation": issued}],
    }
    if current.patient_id:
        report["subject"] = {"type": "Patient", "identifier": {"value": current.patient_id}}
    if (when := _fhir_datetime(current)) is not None:
        report["effectiveDateTime"] = when
    if accession := _header(current, "AccessionNumber"):
        report["basedOn"] = [{"type": "ServiceRequest", "identifier": {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
            "value": accession}}]
    return DiagnosticReport.model_validate(report).model_dump_json(indent=2)
