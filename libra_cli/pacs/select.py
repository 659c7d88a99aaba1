"""Which image of a study is the current, and which earlier study is the prior: pure functions of DICOM headers.

The frontal image (docs/pacs.md#which-image): among the study's CR/DX images (``--modality``), the view is
read from ``ViewPosition``; when that is empty, from ``ViewCodeSequence`` (SNOMED codes or their meaning);
when that is missing too, from a series description, protocol name or image comment that names one view
only ("CHEST PA", "AP portable"; "PA and LAT" names two and is not used). Images "for presentation" come
before raw ones "for processing"; then PA before AP before the other frontal views (the order of
``libra data pair-priors``), then the latest acquisition, then series and instance number. A study without any
frontal image is an error that names each series and the view found in it.

The prior (``--prior auto``): the most recent study of the same patient (``PatientID``, and
``IssuerOfPatientID`` when both studies have one) strictly earlier than the current study (date, then
time; a study on the same day without a time on either side cannot be ordered and is skipped) that has a
frontal image as above. Later and same-moment studies, other patients' studies and studies without a
frontal CR/DX image are skipped, and the skips are recorded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from libra_cli.data.pairing import FRONTAL_VIEWS
from libra_cli.data.studies import VIEW_PREFERENCE
from libra_cli.pacs.client import StudyError

MODALITIES = ("CR", "DX")
# ViewCodeSequence (CID 4010 "DX View"): SNOMED CT and the older SNOMED-RT designators
VIEW_CODES = {"272479007": "PA", "R-10214": "PA", "399348003": "AP", "R-10206": "AP",
              "399173006": "LATERAL", "R-10236": "LATERAL", "399198007": "LATERAL", "R-10232": "LATERAL",
              "49370004": "LATERAL"}
TEXT_FIELDS = ("SeriesDescription", "ProtocolName", "ImageComments", "AcquisitionDeviceProcessingDescription")
_FRONT_WORDS = {"PA": "PA", "POSTEROANTERIOR": "PA", "AP": "AP", "ANTEROPOSTERIOR": "AP", "FRONTAL": "FRONTAL"}
_SIDE_WORDS = {"LAT", "LATERAL", "LL", "RL", "LLAT", "RLAT"}
# SR, presentation states, key objects ...: no pixels to look at
_NOT_IMAGES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.", "1.2.840.10008.5.1.4.1.1.481.")


def _s(ds: Any, keyword: str) -> str:
    v = ds.get(keyword, "") if ds is not None else ""
    return str(v if v is not None else "").strip()


def _int(ds: Any, keyword: str) -> int | None:
    try:
        return int(str(ds.get(keyword, "")).strip())
    except (TypeError, ValueError):
        return None


def view_from_text(text: str) -> str:
    """The one view a free text names ("CHEST PA" -> PA), or "" when it names none or several."""
    words = set(re.findall(r"[A-Z]+", text.upper().replace("-", "")))
    found = {_FRONT_WORDS[w] for w in words if w in _FRONT_WORDS} | ({"LATERAL"} if words & _SIDE_WORDS else set())
    return found.pop() if len(found) == 1 else ""


def view_of(ds: Any) -> tuple[str, str]:
    """(view, where it was read): ViewPosition, else ViewCodeSequence, else a description naming one view."""
    vp = _s(ds, "ViewPosition").upper()
    if vp:
        return vp, "ViewPosition"
    for item in ds.get("ViewCodeSequence", None) or []:
        code = VIEW_CODES.get(str(item.get("CodeValue", "")).strip())
        view = code or view_from_text(str(item.get("CodeMeaning", "")))
        if view:
            return view, "ViewCodeSequence"
    for kw in TEXT_FIELDS:
        view = view_from_text(_s(ds, kw))
        if view:
            return view, kw
    return "", ""


def is_frontal(view: str) -> bool:
    return view in FRONTAL_VIEWS or view == "FRONTAL"


def _tm(value: str) -> str:
    """A DICOM TM as a sortable "HHMMSS.ffffff" ("0815" -> "081500.000000"), "" when missing."""
    value = value.replace(":", "").strip()
    if not value:
        return ""
    whole, _, frac = value.partition(".")
    return f"{whole.ljust(6, '0')[:6]}.{frac.ljust(6, '0')[:6]}"


@dataclass(frozen=True)
class Instance:
    """One DICOM instance of a study, with what the choice looks at; ``header`` is its metadata Dataset."""

    study: str
    series: str
    sop: str
    sop_class: str
    modality: str
    view: str
    view_from: str
    study_date: str
    study_time: str
    patient_id: str
    issuer: str
    series_number: int | None = None
    instance_number: int | None = None
    series_description: str = ""
    for_processing: bool = False
    acquired: str = ""
    is_image: bool = True
    header: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def from_header(cls, ds: Any) -> Instance:
        view, view_from = view_of(ds)
        sop_class = _s(ds, "SOPClassUID")
        acquired = _s(ds, "AcquisitionDateTime") or (_s(ds, "ContentDate") + _tm(_s(ds, "ContentTime"))
                                                      if _s(ds, "ContentDate") else "")
        return cls(study=_s(ds, "StudyInstanceUID"), series=_s(ds, "SeriesInstanceUID"), sop=_s(ds, "SOPInstanceUID"),
                   sop_class=sop_class, modality=_s(ds, "Modality").upper(), view=view, view_from=view_from,
                   study_date=_s(ds, "StudyDate"), study_time=_tm(_s(ds, "StudyTime")),
                   patient_id=_s(ds, "PatientID"), issuer=_s(ds, "IssuerOfPatientID"),
                   series_number=_int(ds, "SeriesNumber"), instance_number=_int(ds, "InstanceNumber"),
                   series_description=_s(ds, "SeriesDescription"),
                   for_processing=_s(ds, "PresentationIntentType").upper() == "FOR PROCESSING", acquired=acquired,
                   is_image=not sop_class.startswith(_NOT_IMAGES) and ds.get("Rows", None) is not None, header=ds)

    @property
    def frontal(self) -> bool:
        return is_frontal(self.view)

    def to_dict(self, prefix: str) -> dict[str, Any]:
        return {f"{prefix}_study": self.study, f"{prefix}_series": self.series, f"{prefix}_instance": self.sop,
                f"{prefix}_view": self.view or None, f"{prefix}_view_from": self.view_from or None,
                f"{prefix}_modality": self.modality or None, f"{prefix}_date": self.study_date or None,
                f"{prefix}_time": self.study_time or None}

    def describe(self) -> str:
        when = f"{self.study_date[:4]}-{self.study_date[4:6]}-{self.study_date[6:]}" if len(self.study_date) == 8 else "no date"
        if self.study_time:
            when += f" {self.study_time[:2]}:{self.study_time[2:4]}"
        view = f"{self.view} (from {self.view_from})" if self.view_from != "ViewPosition" else self.view
        return f"study {self.study} ({when}), series {self.series}, instance {self.sop}: {self.modality} {view}"


def _rank(im: Instance) -> tuple:
    """Sort key of the frontal choice: for presentation first, view, latest acquisition first, series, instance."""
    view = VIEW_PREFERENCE.index(im.view) if im.view in VIEW_PREFERENCE else len(VIEW_PREFERENCE)
    digits = re.sub(r"[^0-9]", "", re.split(r"[+-]", im.acquired)[0])[:20]  # no UTC offset
    when = int(digits.ljust(20, "0")) if digits else None
    big = 1 << 62
    return (im.for_processing, view, when is None, -(when or 0), im.series_number if im.series_number is not None
            else big, im.instance_number if im.instance_number is not None else big, im.sop)


def _series_views(images: Sequence[Instance]) -> str:
    by_series: dict[str, list[Instance]] = {}
    for im in images:
        by_series.setdefault(im.series, []).append(im)
    parts = []
    for uid, ims in by_series.items():
        desc = f" '{ims[0].series_description}'" if ims[0].series_description else ""
        num = f" #{ims[0].series_number}" if ims[0].series_number is not None else ""
        views = sorted({im.view or "view unknown" for im in ims})
        parts.append(f"series {uid}{num}{desc} ({ims[0].modality}): {', '.join(views)}")
    return "; ".join(parts)


def frontal_or_reason(instances: Sequence[Instance], modalities: Sequence[str] = MODALITIES
                      ) -> tuple[Instance | None, str]:
    """The study's frontal image, or None and why there is none (naming each series and its views)."""
    mods = "/".join(modalities)
    images = [im for im in instances if im.is_image]
    usable = [im for im in images if im.modality in modalities]
    if not usable:
        found = ", ".join(sorted({im.modality or "?" for im in instances})) or "none"
        return None, f"no {mods} image (modalities in the study: {found})"
    frontal = [im for im in usable if im.frontal]
    if not frontal:
        return None, f"no frontal {mods} image: {_series_views(usable)}"
    return min(frontal, key=_rank), ""


def choose_frontal(instances: Sequence[Instance], study_uid: str, modalities: Sequence[str] = MODALITIES,
                   role: str = "study") -> Instance:
    """The frontal image of a study; a one-line :class:`StudyError` naming the series when it has none."""
    if not instances:
        raise StudyError(f"{role} {study_uid} has no instances on the server; check the StudyInstanceUID")
    chosen, why = frontal_or_reason(instances, modalities)
    if chosen is None:
        raise StudyError(f"{role} {study_uid} has {why}; libra needs a PA or AP view (docs/pacs.md#which-image)")
    return chosen


@dataclass(frozen=True)
class StudyRecord:
    """A study as a QIDO-RS query lists it."""

    uid: str
    date: str
    time: str
    patient_id: str
    issuer: str = ""

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StudyRecord:
        from pydicom.dataset import Dataset

        ds = Dataset.from_json(d)
        return cls(_s(ds, "StudyInstanceUID"), _s(ds, "StudyDate"), _tm(_s(ds, "StudyTime")), _s(ds, "PatientID"),
                   _s(ds, "IssuerOfPatientID"))


def earlier(a_date: str, a_time: str, b_date: str, b_time: str) -> bool | None:
    """Whether study a is strictly before study b; None when that cannot be told (a date or same-day time missing)."""
    if not a_date or not b_date:
        return None
    if a_date != b_date:
        return a_date < b_date
    if not a_time or not b_time:
        return None
    return a_time < b_time


def same_patient(a: Instance | StudyRecord, b: Instance) -> bool:
    """Same PatientID (exactly), and the same issuer when both name one."""
    if not a.patient_id or a.patient_id != b.patient_id:
        return False
    return not (a.issuer and b.issuer and a.issuer != b.issuer)


@dataclass
class PriorChoice:
    """The prior :func:`choose_prior` found (or None), and every earlier study it passed over, with the reason."""

    prior: Instance | None
    skipped: list[dict[str, str]]
    note: str = ""


def choose_prior(current: Instance, studies: Sequence[StudyRecord], metadata: Callable[[str], Sequence[Instance]],
                 modalities: Sequence[str] = MODALITIES) -> PriorChoice:
    """The most recent earlier study of the patient with a frontal image (its frontal image), see the module doc."""
    skipped: list[dict[str, str]] = []
    candidates = []
    for st in {s.uid: s for s in studies}.values():
        if st.uid == current.study:
            continue
        if not same_patient(st, current):
            continue  # a server that matched loosely: never another patient's study
        before = earlier(st.date, st.time, current.study_date, current.study_time)
        if before is None:
            skipped.append({"study": st.uid, "reason": "cannot be ordered against the current study (date/time missing)"})
        elif before:
            candidates.append(st)
    candidates.sort(key=lambda s: (s.date, s.time, s.uid), reverse=True)
    for st in candidates:
        instances = [im for im in metadata(st.uid) if same_patient(im, current)]
        chosen, why = frontal_or_reason(instances, modalities)
        if chosen is not None:
            return PriorChoice(chosen, skipped)
        skipped.append({"study": st.uid, "reason": why})
    note = "no earlier study of the patient with a frontal " + "/".join(modalities) + " image"
    if not current.study_date:
        note = "the current study has no StudyDate, so no earlier study can be found"
    return PriorChoice(None, skipped, note)
