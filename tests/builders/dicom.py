"""Synthetic chest X-ray DICOM studies for tests and demos: two patients, several dates, views and encodings.

:func:`synthetic_archive` writes the set the PACS tests use (docs/pacs.md#tests) and says, for every
study, which instance libra must pick as the current image and which study as the prior; the pixels are
random "chest-like" pictures (no real data), 12-bit, stored raw, RLE lossless or JPEG 2000 lossless,
MONOCHROME2 or MONOCHROME1 (stored inverted, so every study looks alike once decoded).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # for presentation
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
_NS = uuid.UUID("0b8f5a7e-2d4c-4e1b-9f6a-3c2d1e0f9a8b")


def uid(name: str) -> str:
    """A stable UID for a synthetic object (UUID-derived, "2.25.")."""
    return f"2.25.{uuid.uuid5(_NS, name).int}"


def chest_pixels(seed: int, rows: int = 160, cols: int = 128, bits: int = 12) -> np.ndarray:
    """A random chest-like picture (two dark lung fields in a bright body, noise), ``uint16`` in ``bits`` bits."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    body = np.exp(-(((x - cols / 2) / (0.45 * cols)) ** 2 + ((y - rows / 2) / (0.55 * rows)) ** 2) ** 2)
    img = 0.35 + 0.5 * body
    for side in (-1, 1):
        cx, cy = cols / 2 + side * cols * rng.uniform(0.17, 0.22), rows * rng.uniform(0.42, 0.5)
        lung = np.exp(-(((x - cx) / (0.14 * cols)) ** 2 + ((y - cy) / (0.3 * rows)) ** 2) ** 1.5)
        img -= 0.35 * lung
    img += rng.normal(0, 0.02, img.shape)
    top = (1 << bits) - 1
    return np.clip(img * top, 0, top).astype(np.uint16)


@dataclass
class Spec:
    """One synthetic instance."""

    patient: str
    study: str  # name of the study in the archive
    date: str
    time: str
    view: str  # ViewPosition ("" = empty)
    modality: str = "DX"
    photometric: str = "MONOCHROME2"
    encoding: str = "raw"  # raw | rle | j2k
    description: str = ""
    view_code: tuple[str, str, str] | None = None  # (value, scheme, meaning) for ViewCodeSequence
    series: int = 1
    broken: bool = False  # pixel data cut short: a malformed instance
    seed: int = 0


def make_instance(spec: Spec, name: str) -> Any:
    """The pydicom FileDataset for ``spec`` (``name`` makes its UIDs)."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

    sop_class = {"DX": DX_IMAGE, "CR": CR_IMAGE, "CT": CT_IMAGE}[spec.modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid(f"{name}/instance")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName = spec.patient, f"Synthetic^{spec.patient}"
    ds.PatientBirthDate, ds.PatientSex = "19500101", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid(f"study/{spec.study}"), uid(f"series/{spec.study}/{spec.series}")
    ds.StudyDate, ds.StudyTime, ds.StudyID = spec.date, spec.time, spec.study[:16]
    ds.AccessionNumber, ds.ReferringPhysicianName = f"ACC-{spec.study}"[:16], ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = spec.modality, spec.series, 1
    ds.SeriesDescription = spec.description
    ds.ContentDate, ds.ContentTime = spec.date, spec.time
    if spec.modality != "CT":
        ds.ViewPosition = spec.view
        if spec.modality == "DX":
            ds.PresentationIntentType = "FOR PRESENTATION"
    if spec.view_code:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = spec.view_code
        ds.ViewCodeSequence = [code]
    arr = chest_pixels(spec.seed)
    if spec.photometric == "MONOCHROME1":
        arr = (4095 - arr).astype(np.uint16)
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, spec.photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.tobytes()
    if spec.encoding == "j2k":
        ds.compress(JPEG2000Lossless, arr, generate_instance_uid=False)
    elif spec.encoding == "rle":
        ds.compress(RLELossless, arr, generate_instance_uid=False)
    if spec.broken:
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    return ds


@dataclass
class Archive:
    """What :func:`synthetic_archive` wrote: files, study UIDs by name, and what libra must choose."""

    folder: Path
    files: dict[str, Path] = field(default_factory=dict)  # instance name -> file
    studies: dict[str, str] = field(default_factory=dict)  # study name -> StudyInstanceUID
    instances: dict[str, str] = field(default_factory=dict)  # instance name -> SOPInstanceUID
    current: dict[str, str] = field(default_factory=dict)  # study name -> instance name libra must pick
    prior: dict[str, str | None] = field(default_factory=dict)  # study name -> prior study name (auto), None = none
    errors: dict[str, str] = field(default_factory=dict)  # study name -> words of the error it must give

    def file_of(self, study: str) -> Path:
        return self.files[self.current[study]]


# name: spec. Patient PA001: several earlier studies, three on one day (one lateral-only), a CT study between
# them; patient PB002: a study on the same day as PA001's last, a lateral-only study and a malformed one.
SPECS: dict[str, Spec] = {
    "a1-pa": Spec("PA001", "a1", "20230110", "093000", "PA", encoding="j2k", seed=1),
    "a1-lat": Spec("PA001", "a1", "20230110", "093000", "LATERAL", series=2, seed=2),
    "a2-ap": Spec("PA001", "a2", "20230601", "080000", "AP", modality="CR", photometric="MONOCHROME1",
                  encoding="rle", seed=3),
    "a3-lat": Spec("PA001", "a3", "20230601", "140000", "", description="CHEST LAT", seed=4),
    "a4-pa": Spec("PA001", "a4", "20230601", "160000", "", view_code=("272479007", "SCT", "postero-anterior"), seed=5),
    "a4-lat": Spec("PA001", "a4", "20230601", "160000", "LL", series=2, seed=6),
    "a0-ct": Spec("PA001", "a0", "20240115", "120000", "", modality="CT", description="CT CHEST", seed=7),
    "a5-ap": Spec("PA001", "a5", "20240201", "101500", "AP", description="CHEST AP", seed=8),
    "a5-pa": Spec("PA001", "a5", "20240201", "101500", "PA", description="CHEST PA", series=2, encoding="j2k",
                  seed=9),
    "a5-lat": Spec("PA001", "a5", "20240201", "101500", "LATERAL", series=3, photometric="MONOCHROME1", seed=10),
    "b1-ap": Spec("PB002", "b1", "20240201", "090000", "AP", modality="CR", seed=11),
    "b2-lat": Spec("PB002", "b2", "20240301", "100000", "LATERAL", description="CHEST LAT", seed=12),
    "b3-pa": Spec("PB002", "b3", "20240401", "100000", "PA", broken=True, seed=13),
}
EXPECTED_CURRENT = {"a1": "a1-pa", "a2": "a2-ap", "a4": "a4-pa", "a5": "a5-pa", "b1": "b1-ap", "b3": "b3-pa"}
EXPECTED_PRIOR: dict[str, str | None] = {"a1": None, "a2": "a1", "a4": "a2", "a5": "a4", "b1": None, "b3": "b1"}
EXPECTED_ERRORS = {"a3": "no frontal", "a0": "no CR/DX image", "b2": "no frontal", "b3": "not a readable DICOM image"}


def synthetic_archive(folder: str | Path) -> Archive:
    """Write every instance of :data:`SPECS` as ``folder/<study>/<instance>.dcm``."""
    from pydicom import dcmwrite

    folder = Path(folder)
    arc = Archive(folder, current=dict(EXPECTED_CURRENT), prior=dict(EXPECTED_PRIOR), errors=dict(EXPECTED_ERRORS))
    for name, spec in SPECS.items():
        ds = make_instance(spec, name)
        path = folder / spec.study / f"{name}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        dcmwrite(path, ds, enforce_file_format=True)
        arc.files[name] = path
        arc.studies[spec.study] = str(ds.StudyInstanceUID)
        arc.instances[name] = str(ds.SOPInstanceUID)
    return arc
