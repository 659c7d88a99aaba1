"""The findings as a DICOM Comprehensive SR (highdicom), referencing its source images, marked AI-generated.

The document follows TID 2000 "Basic Diagnostic Imaging Report" (docs/pacs.md#dicom-sr):

    CONTAINER (18748-4, LN, "Diagnostic Imaging Report")
      HAS CONCEPT MOD  language: English
      HAS OBS CONTEXT  observer type: Device; device UID, name "libra", model name = the model
      CONTAINS CONTAINER (121070, DCM, "Findings")
        CONTAINS TEXT (121071, DCM, "Finding") = the findings text
          INFERRED FROM IMAGE (121324, DCM, "Source image") = the current image [, the prior image]
      CONTAINS TEXT (121106, DCM, "Comment") = AI-generated draft, research use only; model, revision, prior
      CONTAINS TEXT (111001, DCM, "Algorithm Name") / (111003, DCM, "Algorithm Version")

It belongs to the current study (a new series), is UNVERIFIED, PARTIAL and PRELIMINARY, has Content
Qualification RESEARCH and says "AI-generated ... research use only" in its series description; the
referenced instances are listed as evidence (the prior's study under Pertinent Other Evidence). Its
UIDs derive from the report's content, so storing the same report twice replaces it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from libra_cli.pacs.select import Instance

SERIES_DESCRIPTION = "AI-generated draft findings (Libra) - RESEARCH USE ONLY"
SERIES_NUMBER = 9901
_NS = uuid.UUID("9c1d7e52-61a4-4f0b-8b3e-2a5f4c6d7e81")
NOTICE = "AI-generated draft (Libra): research use only, not for clinical decisions; a radiologist must review it."
# Type 2 attributes highdicom copies from the first evidence instance: present (maybe empty) in every header
_TYPE2 = ("PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
          "ReferringPhysicianName")


def _uid(*parts: str) -> str:
    """A UUID-derived UID ("2.25.") from the parts: the same report gets the same UID."""
    return f"2.25.{uuid.uuid5(_NS, chr(31).join(parts)).int}"


def _evidence(im: Instance) -> Any:
    ds = im.header.copy()
    for kw in _TYPE2:
        if kw not in ds:
            setattr(ds, kw, "")
    return ds


def _code(value: str, scheme: str, meaning: str) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def build_sr(text: str, current: Instance, prior: Instance | None, *, model: str, revision: str | None,
             prior_note: str = "", when: datetime | None = None) -> Any:
    """The SR document (a pydicom Dataset, highdicom's ``ComprehensiveSR``) for one report."""
    import highdicom as hd

    from libra_cli import __version__

    rel = hd.sr.RelationshipTypeValues
    seed = [current.study, current.sop, prior.sop if prior else "", model, revision or "", text]
    root = hd.sr.ContainerContentItem(name=_code("18748-4", "LN", "Diagnostic Imaging Report"), template_id="2000")
    content = list(hd.sr.LanguageOfContentItemAndDescendants(_code("en", "RFC5646", "English")))
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=_uid("device", model, revision or ""), name="libra",
                                                       manufacturer_name="libra", model_name=model[:64])
    content += list(hd.sr.ObserverContext(_code("121007", "DCM", "Device"), device))
    findings = hd.sr.ContainerContentItem(name=_code("121070", "DCM", "Findings"), relationship_type=rel.CONTAINS)
    finding = hd.sr.TextContentItem(name=_code("121071", "DCM", "Finding"), value=text, relationship_type=rel.CONTAINS)
    finding.ContentSequence = [
        hd.sr.ImageContentItem(name=_code("121324", "DCM", "Source image"), referenced_sop_class_uid=im.sop_class,
                               referenced_sop_instance_uid=im.sop, relationship_type=rel.INFERRED_FROM)
        for im in [current] + ([prior] if prior is not None else [])
    ]
    findings.ContentSequence = [finding]
    prior_text = (f"prior study {prior.study} (instance {prior.sop}) compared" if prior is not None
                  else f"no prior study: {prior_note or 'the current image was used as the prior'}")
    comment = f"{NOTICE} Model {model}, revision {revision or 'unspecified'}, libra {__version__}; {prior_text}."
    content += [findings,
                hd.sr.TextContentItem(name=_code("121106", "DCM", "Comment"), value=comment,
                                      relationship_type=rel.CONTAINS),
                hd.sr.TextContentItem(name=_code("111001", "DCM", "Algorithm Name"), value=model,
                                      relationship_type=rel.CONTAINS),
                hd.sr.TextContentItem(name=_code("111003", "DCM", "Algorithm Version"), value=revision or "unspecified",
                                      relationship_type=rel.CONTAINS)]
    root.ContentSequence = content
    when = when or datetime.now()
    evidence = [_evidence(current)] + ([_evidence(prior)] if prior is not None and prior.sop != current.sop else [])
    return hd.sr.ComprehensiveSR(
        evidence=evidence, content=root, series_instance_uid=_uid("series", current.study, model),
        series_number=SERIES_NUMBER, sop_instance_uid=_uid("instance", *seed), instance_number=1,
        manufacturer="libra", manufacturer_model_name=model[:64], software_versions=f"libra {__version__}",
        series_description=SERIES_DESCRIPTION, content_qualification="RESEARCH", is_complete=False, is_final=False,
        is_verified=False, content_date=when.date(), content_time=when.time(), series_date=when.date(),
        series_time=when.time(), specific_character_set="ISO_IR 192")  # UTF-8: any findings text, any name


def sr_findings(ds: Any) -> tuple[str, list[str]]:
    """(findings text, referenced SOP Instance UIDs) of an SR this module wrote (for checks and tests)."""
    for item in ds.ContentSequence:
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "121070":
            finding = item.ContentSequence[0]
            refs = [str(c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for c in finding.get("ContentSequence", [])
                    if c.ValueType == "IMAGE"]
            return str(finding.TextValue), refs
    raise ValueError("not a libra findings SR: no Findings container")
