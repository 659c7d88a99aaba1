"""A study on a DICOMweb server -> the current and prior instances libra reads (chosen by :mod:`.select`).

:class:`Studies` looks studies up (WADO-RS metadata, QIDO-RS by patient), caching a bounded number of
them so a batch over many studies of one patient asks once; :func:`resolve` applies the choice rules
and records every decision in :class:`Resolved`; :func:`fetch_instance` retrieves the chosen instance
as stored, which ``libra_cli.images`` decodes exactly as it decodes the same file on disk.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from libra_cli.errors import InputError
from libra_cli.pacs.client import DicomwebClient, StudyError
from libra_cli.pacs.select import (
    MODALITIES,
    Instance,
    PriorChoice,
    StudyRecord,
    choose_frontal,
    choose_prior,
    earlier,
    same_patient,
)

RULE = ("current: the study's frontal CR/DX image (PA > AP > other frontal; ViewPosition, else ViewCodeSequence, "
        "else a description naming one view); prior: the same choice in the most recent earlier study of the "
        "same PatientID that has one (docs/pacs.md#which-image)")
# what the reports need of a source instance (kept instead of whole headers: a batch holds two per study)
EVIDENCE = ("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
            "Modality", "PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID",
            "StudyDate", "StudyTime", "TimezoneOffsetFromUTC", "AccessionNumber", "ReferringPhysicianName",
            "StudyDescription", "SeriesNumber", "InstanceNumber", "ViewPosition")


def evidence_header(ds: Any) -> Any:
    """A small copy of ``ds`` with only the identifying attributes the FHIR and SR writers use."""
    from pydicom.dataset import Dataset

    out = Dataset()
    for kw in EVIDENCE:
        if kw in ds:
            out[kw] = ds[kw]
    return out


def _instance(ds: Any) -> Instance:
    return replace(Instance.from_header(ds), header=evidence_header(ds))


class Studies:
    """Study lookups on one server, with a bounded cache (thread-safe: batch resolves studies in threads)."""

    def __init__(self, client: DicomwebClient, modalities: Sequence[str] = MODALITIES, cache_studies: int = 512) -> None:
        self.client = client
        self.modalities = tuple(m.upper() for m in modalities)
        self._studies: OrderedDict[str, list[Instance]] = OrderedDict()
        self._patients: OrderedDict[tuple[str, str], list[StudyRecord]] = OrderedDict()
        self._max = cache_studies
        self._lock = threading.Lock()

    def _cached(self, table: OrderedDict, key: Any, load: Any) -> Any:
        with self._lock:
            if key in table:
                table.move_to_end(key)
                return table[key]
        value = load()
        with self._lock:
            table[key] = value
            while len(table) > self._max:
                table.popitem(last=False)
        return value

    def instances(self, study_uid: str) -> list[Instance]:
        """The study's instances ([] when the server does not have it)."""
        return self._cached(self._studies, study_uid,
                            lambda: [_instance(ds) for ds in self.client.study_metadata(study_uid)])

    def of_patient(self, patient_id: str, issuer: str = "") -> list[StudyRecord]:
        """Every study the server lists for the patient."""
        def load() -> list[StudyRecord]:
            found = self.client.search_studies({"PatientID": patient_id},
                                               fields=("StudyDate", "StudyTime", "IssuerOfPatientID"))
            return [StudyRecord.from_json(d) for d in found]

        return self._cached(self._patients, (patient_id, issuer), load)


@dataclass
class Resolved:
    """The instances a report is made from, and how they were chosen (recorded in every output)."""

    url: str
    current: Instance
    prior: Instance | None
    prior_mode: str  # auto | given | none
    note: str = ""
    warning: str = ""
    skipped: list[dict[str, str]] = field(default_factory=list)
    modalities: tuple[str, ...] = MODALITIES

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": "dicomweb", "url": self.url, **self.current.to_dict("current")}
        if self.prior is not None:
            d.update(self.prior.to_dict("prior"))
        else:
            d.update({"prior_study": None, "prior_series": None, "prior_instance": None})
        d.update(prior_mode=self.prior_mode, modalities=list(self.modalities), rule=RULE)
        for key in ("note", "warning"):
            if getattr(self, key):
                d[key] = getattr(self, key)
        if self.skipped:
            d["skipped_earlier_studies"] = self.skipped
        return d

    def lines(self) -> list[str]:
        """What was used, for stderr."""
        how = {"auto": "auto: the most recent earlier study with a frontal image", "given": "given with --prior"}
        out = [f"current: {self.current.describe()}"]
        if self.prior is not None:
            out.append(f"prior:   {self.prior.describe()} ({how[self.prior_mode]})")
        else:
            out.append(f"prior:   none ({self.note})")
        if self.skipped:
            out.append(f"skipped: {len(self.skipped)} earlier stud{'y' if len(self.skipped) == 1 else 'ies'} "
                       f"({'; '.join(s['study'] + ': ' + s['reason'] for s in self.skipped[:3])}"
                       f"{'; ...' if len(self.skipped) > 3 else ''})")
        if self.warning:
            out.append(f"warning: {self.warning}")
        return out


def is_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and all(p.isdigit() for p in value.split("."))


def parse_prior(value: str | None) -> str:
    """``auto`` / ``none`` (any case) or a StudyInstanceUID (checked for its form)."""
    v = (value or "auto").strip()
    if v.lower() in ("auto", "none"):
        return v.lower()
    if not is_uid(v):
        raise InputError(f"--prior {value!r} is neither auto, none nor a StudyInstanceUID (digits and dots)")
    return v


def check_uid(uid: str, what: str = "--study") -> str:
    uid = (uid or "").strip()
    if not is_uid(uid):
        raise InputError(f"{what} {uid!r} is not a StudyInstanceUID (digits and dots, at most 64 characters)")
    return uid


def resolve(studies: Studies, study_uid: str, prior: str = "auto") -> Resolved:
    """The current study's frontal image and the prior's (``prior``: auto | none | a StudyInstanceUID)."""
    client = studies.client
    found = studies.instances(study_uid)
    if not found:
        raise StudyError(f"study {study_uid} is not on the DICOMweb server {client.url}; check the StudyInstanceUID")
    current = choose_frontal(found, study_uid, studies.modalities)
    res = Resolved(client.url, current, None, "none" if prior == "none" else "auto" if prior == "auto" else "given",
                   modalities=studies.modalities)
    if prior == "none":
        res.note = "--prior none: the current image is used as the prior"
    elif prior == "auto":
        if not current.patient_id:
            res.note = "the current study has no PatientID, so no earlier study can be looked up"
        else:
            choice: PriorChoice = choose_prior(current, studies.of_patient(current.patient_id, current.issuer),
                                               studies.instances, studies.modalities)
            res.prior, res.skipped, res.note = choice.prior, choice.skipped, choice.note
    else:
        res.prior, res.warning = _given_prior(studies, current, prior)
    return res


def _given_prior(studies: Studies, current: Instance, uid: str) -> tuple[Instance, str]:
    if uid == current.study:
        raise StudyError(f"--prior {uid} is the current study; give an earlier study, --prior auto or --prior none")
    found = studies.instances(uid)
    if not found:
        raise StudyError(f"prior study {uid} is not on the DICOMweb server {studies.client.url}; check the UID")
    if not all(same_patient(im, current) for im in found):
        raise StudyError(f"prior study {uid} belongs to another patient than study {current.study} (PatientID differs); "
                         "give an earlier study of the same patient, or --prior auto")
    chosen = choose_frontal(found, uid, studies.modalities, role="prior study")
    before = earlier(chosen.study_date, chosen.study_time, current.study_date, current.study_time)
    warning = "" if before else f"prior study {uid} is not earlier than the current study {current.study}"
    return chosen, warning


def fetch_instance(client: DicomwebClient, im: Instance) -> Any:
    """The chosen instance, whole and as stored (one total deadline for the download)."""
    with client.deadline():
        return client.instance(im.study, im.series, im.sop)


def local_instance(path: str | Path) -> Instance:
    """The header of a DICOM file given on the command line (for ``--fhir`` / ``--sr`` with files)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for non-DICOM files
        raise InputError(f"--fhir/--sr need DICOM inputs: {path} is not a DICOM file ({type(exc).__name__}); "
                         "give .dcm files or --dicomweb") from exc
    return _instance(ds)


@dataclass
class StudyInput:
    """A study fetched for ``libra infer --study``: how the instances were chosen, and the instances themselves."""

    resolved: Resolved
    current: Any  # pydicom Dataset, pixels included
    prior: Any | None
    client: DicomwebClient

    def url_of(self, im: Instance | None) -> str | None:
        """The WADO-RS address of an instance (what the JSON output names as current/prior)."""
        if im is None:
            return None
        return f"{self.client.url}/studies/{im.study}/series/{im.series}/instances/{im.sop}"


def open_study(url: str, study_uid: str, prior: str | None = "auto", modalities: Sequence[str] = MODALITIES,
               timeout: float | None = None) -> StudyInput:
    """Resolve and fetch one study, all within one total deadline (``timeout``; one-line errors)."""
    study_uid, prior = check_uid(study_uid), parse_prior(prior)
    client = DicomwebClient(url, timeout)
    with client.deadline():
        res = resolve(Studies(client, modalities), study_uid, prior)
        cur = fetch_instance(client, res.current)
        pri = fetch_instance(client, res.prior) if res.prior is not None else None
    return StudyInput(res, cur, pri, client)


def studies_since(client: DicomwebClient, since: str, modalities: Sequence[str] = MODALITIES) -> list[str]:
    """StudyInstanceUIDs of every study from ``since`` (YYYY-MM-DD) on with one of ``modalities``, oldest first."""
    import re

    digits = re.sub(r"[^0-9]", "", since or "")
    if len(digits) != 8 or re.fullmatch(r"\d{4}-?\d{2}-?\d{2}", since.strip()) is None:
        raise InputError(f"--since {since!r} is not a date; give YYYY-MM-DD")
    from pydicom.dataset import Dataset

    found: list[StudyRecord] = []
    # the date range only: servers differ in how (and whether) they filter and page on ModalitiesInStudy, so the
    # modalities are checked here; a study that lists none is kept (its lookup then says what it holds)
    for d in client.search_studies({"StudyDate": f"{digits}-"}, fields=("StudyDate", "StudyTime", "ModalitiesInStudy")):
        rec = StudyRecord.from_json(d)
        value = Dataset.from_json(d).get("ModalitiesInStudy", None) or []
        mods = {str(m).strip().upper() for m in ([value] if isinstance(value, str) else value)}
        if rec.uid and (not rec.date or rec.date >= digits) and (not mods or mods & set(modalities)):
            found.append(rec)
    return [r.uid for r in sorted(found, key=lambda r: (r.date, r.time, r.uid))]
