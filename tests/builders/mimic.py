"""Synthetic MIMIC-CXR-shaped metadata and reports, for tests and benchmarks (no real data ships).

The generators aim at the awkward cases the real corpus has: same-day studies, tied
timestamps, studies either side of midnight, missing views, reports without headers, misspelt
headers, empty findings, CRLF line ends, BOMs, non-UTF-8 bytes and empty files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

VIEWS = ("PA", "AP", "LATERAL", "LL", "AP AXIAL", "PA LLD", "", "")

META_HEADER = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
    "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning"
)


def make_metadata(
    n_subjects: int,
    images_per_subject: float = 5.7,
    seed: int = 0,
    adversarial: bool = True,
    split_p: tuple[float, float, float] = (0.9784, 0.0079, 0.0137),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Columns of a metadata table and a split table (numpy arrays), MIMIC-shaped.

    ~``images_per_subject`` images per subject over a few studies; with ``adversarial`` many
    studies share a date, some share a time exactly, and some sit just either side of midnight.
    Subjects go to train/validate/test with ``split_p`` (default: MIMIC-CXR-JPG's image shares).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    subjects = 10_000_000 + rng.choice(9_990_000, size=n_subjects, replace=False)
    n_studies = np.maximum(1, rng.poisson(images_per_subject / 1.65, size=n_subjects))
    study_subject = np.repeat(subjects, n_studies)
    n_st = len(study_subject)
    study_ids = 50_000_000 + rng.choice(9_999_999, size=n_st, replace=False)
    base = rng.integers(0, 3000, size=n_subjects).repeat(n_studies)
    offset = rng.integers(0, 400, size=n_st)
    if adversarial:
        offset[rng.random(n_st) < 0.25] = 0  # many same-day studies
    days = base + offset
    date = _civil(days + 76_000)  # years ~2178..2190, like MIMIC's shifted dates
    tod = rng.integers(0, 240000, size=n_st).astype(np.float64) + rng.integers(0, 1000, n_st) / 1000.0
    if adversarial:
        tod[rng.random(n_st) < 0.05] = 235959.999  # just before midnight
        tod[rng.random(n_st) < 0.05] = 0.0  # just after midnight
        tod[rng.random(n_st) < 0.10] = 120000.0  # exact ties
    imgs = np.maximum(1, rng.poisson(1.65, size=n_st))
    row_study = np.repeat(np.arange(n_st), imgs)
    n = len(row_study)
    perm = rng.permutation(n) if adversarial else np.arange(n)
    row_study = row_study[perm]
    dicom = np.array([f"{a:08x}-{b:08x}-{c:08x}-{d:08x}-{e:08x}" for a, b, c, d, e in rng.integers(0, 2**32, size=(n, 5))])
    views = np.array(VIEWS)[rng.integers(0, len(VIEWS), size=n)] if adversarial else np.array(["PA", "LATERAL"])[rng.integers(0, 2, size=n)]
    meta = {
        "dicom_id": dicom,
        "subject_id": study_subject[row_study],
        "study_id": study_ids[row_study],
        "ViewPosition": views,
        "StudyDate": date[row_study],
        "StudyTime": tod[row_study],
    }
    subj_split = rng.choice(np.array(["train", "validate", "test"]), p=list(split_p), size=n_subjects)
    lookup = dict(zip(subjects.tolist(), subj_split.tolist(), strict=True))
    split = {"dicom_id": dicom, "split": np.array([lookup[s] for s in meta["subject_id"].tolist()])}
    return meta, split


def _civil(days: Any) -> Any:
    """YYYYMMDD integers for days since 1970-01-01 (inverse of days-from-civil)."""
    import numpy as np

    z = np.asarray(days) + 719468
    era = np.floor_divide(z, 146097)
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = np.where(mp < 10, mp + 3, mp - 9)
    y = y + (m <= 2)
    return (y * 10000 + m * 100 + d).astype(np.int64)


def write_metadata_csv(meta: dict[str, Any], path: Path, compresslevel: int = 6) -> None:
    """Write the MIMIC-CXR-JPG metadata CSV (all 12 columns; gzip if the name ends in .gz)."""
    import gzip

    n = len(meta["dicom_id"])
    times = [f"{t:.3f}".rstrip("0").rstrip(".") if t != int(t) else f"{int(t)}" for t in meta["StudyTime"].tolist()]
    lines = [META_HEADER]
    for d, s, st, v, dt, tm in zip(
        meta["dicom_id"].tolist(), meta["subject_id"].tolist(), meta["study_id"].tolist(),
        meta["ViewPosition"].tolist(), meta["StudyDate"].tolist(), times, strict=True,
    ):
        lines.append(f"{d},{s},{st},CHEST (PA AND LAT),{v},3056,2544,{dt},{tm},Chest (PA and lateral),postero-anterior,Erect")
    data = ("\n".join(lines) + "\n").encode()
    assert n == len(lines) - 1
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb", compresslevel=compresslevel) as fh:
            fh.write(data)
    else:
        Path(path).write_bytes(data)


def write_split_csv(split: dict[str, Any], meta: dict[str, Any], path: Path, compresslevel: int = 6) -> None:
    """Write ``mimic-cxr-2.0.0-split.csv`` (dicom_id, study_id, subject_id, split)."""
    import gzip

    lines = ["dicom_id,study_id,subject_id,split"]
    lines += [
        f"{d},{st},{s},{sp}"
        for d, st, s, sp in zip(
            split["dicom_id"].tolist(), meta["study_id"].tolist(), meta["subject_id"].tolist(), split["split"].tolist(),
            strict=True,
        )
    ]
    data = ("\n".join(lines) + "\n").encode()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb", compresslevel=compresslevel) as fh:
            fh.write(data)
    else:
        Path(path).write_bytes(data)


# ---------------------------------------------------------------- reports

_HEADERS = {
    "examination": ("EXAMINATION", "EXAM", "TYPE OF EXAMINATION"),
    "indication": ("INDICATION", "REASON FOR EXAMINATION", "REASON FOR EXAM", "CLINICAL INDICATION", "IDICATION"),
    "history": ("HISTORY", "CLINICAL HISTORY", "PATIENT HISTORY", "CLINICAL INFORMATION", "PFI"),
    "technique": ("TECHNIQUE",),
    "comparison": ("COMPARISON", "COMPARISONS", "COMPARISION", "REFERENCE EXAM", "COMPARISON FILM"),
    "findings": ("FINDINGS", "FINDING", "FINDNGS", "CHEST, TWO VIEWS", "PA AND LATERAL VIEWS OF THE CHEST", "FRONTAL VIEW"),
    "impression": ("IMPRESSION", "CONCLUSION", "IMPRESSON", "FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION"),
    "other": ("NOTIFICATION", "RECOMMENDATION(S)", "WET READ", "ADDENDUM", "DATE", "COMMENT", "NOTE"),
}
_SENTENCES = (
    "The lungs are clear without focal consolidation.", "No pleural effusion or pneumothorax is seen.",
    "Heart size is normal.", "Mediastinal and hilar contours are unremarkable.",
    "There is mild pulmonary vascular congestion.", "Right PICC line ends in the low SVC.",
    "Interval increase in small left pleural effusion.", "Degenerative changes of the thoracic spine.",
    "___ year old man with shortness of breath // eval for pneumonia", "Chest PA and lateral.",
    "Portable AP chest radiograph dated ___.", "Patchy opacity at the right base could reflect atelectasis.",
)


def make_report(rng: Any, kind: int | None = None) -> bytes:
    """One synthetic report (bytes), MIMIC-formatted with a leading space on each line.

    ``kind`` picks the oddity (None: random): 0 normal, 1 no headers, 2 empty findings + last
    paragraph, 3 CRLF, 4 BOM, 5 non-UTF-8 byte, 6 empty file, 7 lowercase/odd headers,
    8 header at the very end, 9 repeated sections.
    """
    if kind is None:
        kind = int(rng.choice(10, p=[0.55, 0.06, 0.08, 0.06, 0.04, 0.03, 0.02, 0.06, 0.04, 0.06]))
    if kind == 6:
        return b""

    def sent(k: int) -> str:
        return " ".join(_SENTENCES[int(i)] for i in rng.integers(0, len(_SENTENCES), size=k))

    def para(k: int) -> str:
        return "\n ".join(sent(int(rng.integers(1, 3))) for _ in range(k))

    lines = ["                                 FINAL REPORT"]
    if kind == 1:
        lines.append(" " + para(int(rng.integers(1, 4))))
        lines.append(" \n " + para(int(rng.integers(1, 3))))
    else:
        order = ["examination", "indication", "history", "technique", "comparison", "findings", "impression"]
        keep = [s for s in order if rng.random() < 0.8]
        if kind == 2:
            keep = [s for s in keep if s != "impression"]
            if "findings" not in keep:
                keep.append("findings")
        if kind == 9:
            keep += [str(rng.choice(["findings", "impression", "comparison"]))]
        if rng.random() < 0.1:
            keep.insert(int(rng.integers(0, len(keep) + 1)), "other")
        for sec in keep:
            names = _HEADERS[sec]
            head = names[int(rng.integers(0, len(names)))]
            if kind == 7:
                head = str(rng.choice([head.lower(), head.title(), head + " (PORTABLE)", "CHEST, PORTABLE", head]))
            if kind == 2 and sec == "findings":
                lines.append(f" {head}:")
                lines.append(" ")
                lines.append(" " + para(1))
                lines.append(" \n " + para(2) + "\n \n " + para(1))
                continue
            body = para(int(rng.integers(1, 3)))
            if rng.random() < 0.5:
                lines.append(f" {head}:  {body}")
            else:
                lines.append(f" {head}: \n \n {body}")
            lines.append(" ")
        if kind == 8:
            lines.append(" IMPRESSION:")
    text = "\n".join(lines) + "\n"
    if kind == 3:
        text = text.replace("\n", "\r\n")
        if rng.random() < 0.3:
            text = text.replace("\r\n", "\r", 2)
    data = text.encode("utf-8")
    if kind == 4:
        data = b"\xef\xbb\xbf" + data
    if kind == 5:
        cut = int(rng.integers(0, len(data)))
        data = data[:cut] + bytes([int(rng.choice([0x92, 0xE9, 0xFF, 0xC3]))]) + data[cut:]
    return data


def write_report_tree(
    root: Path,
    n_reports: int,
    seed: int = 0,
    reports_per_subject: float = 3.5,
    special: bool = True,
) -> list[str]:
    """Write ``root/pNN/pSUBJECT/sSTUDY.txt`` reports; return the study stems written.

    With ``special`` a few of the corpus' special-cased study ids are included, plus stray
    entries the walker must ignore.
    """
    import numpy as np

    from libra_cli.data.sections import SPECIAL_SECTION, SPECIAL_SLICE

    rng = np.random.default_rng(seed)
    root = Path(root)
    stems: list[str] = []
    specials = list(SPECIAL_SLICE)[:4] + list(SPECIAL_SECTION)[:4] if special else []
    study_ids = 50_000_000 + rng.choice(9_999_999, size=n_reports, replace=False)
    made_dirs: set[str] = set()
    subj = 10_000_000
    i = 0
    while i < n_reports:
        subj += int(rng.integers(1, 400))
        k = max(1, int(rng.poisson(reports_per_subject)))
        folder = root / f"p{str(subj)[:2]}" / f"p{subj}"
        if str(folder) not in made_dirs:
            folder.mkdir(parents=True, exist_ok=True)
            made_dirs.add(str(folder))
        for _ in range(min(k, n_reports - i)):
            stem = specials.pop() if specials else f"s{study_ids[i]}"
            data = make_report(rng)
            if stem in SPECIAL_SECTION:
                want = SPECIAL_SECTION[stem].upper()
                data = (f" FINAL REPORT\n INDICATION:  cough\n \n {want}:  Call the team.\n \n"
                        " COMPARISON:  None.\n").encode()
            (folder / f"{stem}.txt").write_bytes(data)
            stems.append(stem)
            i += 1
    if special:
        (root / "index.html").write_text("not a report")
        (root / "p10").mkdir(exist_ok=True)
        (root / "p10" / "notes.txt").write_text("stray")  # not a p-folder: ignored
        stray = root / "p10" / "p10000001"
        stray.mkdir(exist_ok=True)
        (stray / "readme.md").write_text("ignored")  # not s*.txt: ignored
    return stems
