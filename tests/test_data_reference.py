"""Straightforward re-implementations of the original algorithms, used as the oracle.

- ``snippet_pairs``: the Libra README "Prior Image Retrieve" loop, verbatim in spirit (pandas,
  per-subject filtering, ``iterrows``), on a joined metadata+split frame.
- ``reference_sections``: ``create_section_files.py`` + ``section_parser.py`` (Libra's
  customised MIMIC-CXR scripts), reading files in Python text mode as the original does;
  the only change is that files are visited in sorted order, and the file is decoded by the
  same policy as libra (BOM dropped, bad bytes replaced) because the original crashes there.

The tests at the bottom check the oracle itself against hand-worked examples.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

import pandas as pd

# ----------------------------------------------------------------------------- pairing


def snippet_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """The README snippet: sort, then walk each subject's rows carrying the previous image."""
    df = df.sort_values(by=["subject_id", "StudyDate", "StudyTime"])
    df = df.reset_index(drop=True)
    df["prior_image"] = None
    for subject_id in df["subject_id"].unique():
        group = df[df["subject_id"] == subject_id]
        prior_image = None
        last_date = None
        for idx, row in group.iterrows():
            if last_date is None or row["StudyDate"] > last_date:
                df.at[idx, "prior_image"] = prior_image
                last_date = row["StudyDate"]
            else:
                same_day_first = group[(group["StudyDate"] == row["StudyDate"])].index[0]
                df.at[idx, "prior_image"] = df.at[same_day_first, "prior_image"]
            prior_image = row["image"]
    return df


def mimic_image(subject: int, study: int, dicom: str) -> str:
    return f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"


def join_split(meta: pd.DataFrame, split: pd.DataFrame | None, split_name: str = "all") -> pd.DataFrame:
    """Inner join on dicom_id keeping metadata order, then the split filter, then image paths."""
    df = meta.copy()
    if split is not None:
        df = df.merge(split[["dicom_id", "split"]], on="dicom_id", how="inner")
        if split_name != "all":
            df = df[df["split"] == split_name]
    df = df.reset_index(drop=True)
    df["image"] = [mimic_image(s, st, d) for s, st, d in zip(df.subject_id, df.study_id, df.dicom_id, strict=True)]
    return df


# ----------------------------------------------------------------------------- sections

_P_SECTION = re.compile(r"\n ([A-Z ()/,-]+):\s", re.DOTALL)


def ref_section_text(text):  # noqa: ANN001, ANN201 - kept close to the original
    sections, section_names, section_idx = [], [], []
    idx = 0
    s = _P_SECTION.search(text, idx)
    if s:
        sections.append(text[0 : s.start(1)])
        section_names.append("preamble")
        section_idx.append(0)
        while s:
            current_section = s.group(1).lower()
            idx_start = s.end()
            idx_skip = text[idx_start:].find("\n")
            if idx_skip == -1:
                idx_skip = 0
            s = _P_SECTION.search(text, idx_start + idx_skip)
            idx_end = len(text) if s is None else s.start()
            sections.append(text[idx_start:idx_end])
            section_names.append(current_section)
            section_idx.append(idx_start)
    else:
        sections.append(text)
        section_names.append("full report")
        section_idx.append(0)
    section_names = ref_normalize(section_names)
    for i in reversed(range(len(section_names))):
        if section_names[i] in ("impression", "findings"):
            if sections[i].strip() == "":
                sections.pop(i)
                section_names.pop(i)
                section_idx.pop(i)
    if ("impression" not in section_names) & ("findings" not in section_names):
        if "\n \n" in sections[-1]:
            sections.append("\n \n".join(sections[-1].split("\n \n")[1:]))
            sections[-2] = sections[-2].split("\n \n")[0]
            section_names.append("last_paragraph")
            section_idx.append(section_idx[-1] + len(sections[-2]))
    return sections, section_names, section_idx


_FREQUENT = {
    "preamble": "preamble", "impression": "impression", "comparison": "comparison", "indication": "indication",
    "findings": "findings", "examination": "examination", "technique": "technique", "history": "history",
    "comparisons": "comparison", "clinical history": "history", "reason for examination": "indication",
    "notification": "notification", "reason for exam": "indication", "clinical information": "history",
    "exam": "examination", "clinical indication": "indication", "conclusion": "impression",
    "chest, two views": "findings", "recommendation(s)": "recommendations", "type of examination": "examination",
    "reference exam": "comparison", "patient history": "history", "addendum": "addendum",
    "comparison exam": "comparison", "date": "date", "comment": "comment", "findings and impression": "impression",
    "wet read": "wet read", "comparison film": "comparison", "recommendations": "recommendations",
    "findings/impression": "impression", "pfi": "history", "recommendation": "recommendations",
    "wetread": "wet read", "ndication": "impression", "impresson": "impression", "imprression": "impression",
    "imoression": "impression", "impressoin": "impression", "imprssion": "impression", "impresion": "impression",
    "imperssion": "impression", "mpression": "impression", "impession": "impression",
    "findings/ impression": "impression", "finding": "findings", "findins": "findings", "findindgs": "findings",
    "findgings": "findings", "findngs": "findings", "findnings": "findings", "finidngs": "findings",
    "idication": "indication", "reference findings": "findings", "comparision": "comparison",
    "comparsion": "comparison", "comparrison": "comparison", "comparisions": "comparison",
}
_P_FINDINGS = re.compile("({})".format("|".join([
    "chest", "portable", "pa and lateral", "lateral and pa", "ap and lateral", "lateral and ap", "frontal and",
    "two views", "frontal view", "pa view", "ap view", "one view", "lateral view", "bone window",
    "frontal upright", "frontal semi-upright", "ribs", "pa and lat",
])))


def ref_normalize(section_names):  # noqa: ANN001, ANN201
    section_names = [s.lower().strip() for s in section_names]
    main_sections = ["impression", "findings", "history", "comparison", "indication", "technique", "addendum"]
    for i, s in enumerate(section_names):
        if s in _FREQUENT:
            section_names[i] = _FREQUENT[s]
            continue
        main_flag = False
        for m in main_sections:
            if m in s:
                section_names[i] = m
                main_flag = True
                break
        if main_flag:
            continue
        m = _P_FINDINGS.search(s)
        if m is not None:
            section_names[i] = "findings"
    return section_names


def _list_rindex(lst, s):  # noqa: ANN001, ANN202
    return len(lst) - lst[-1::-1].index(s) - 1


_ORDER = ("findings", "impression", "indication", "comparison", "technique", "history", "examination", "last_paragraph")


def _read_text_mode(path: Path) -> str:
    """What ``open(path, 'r')`` + readlines gives, with BOM dropped and bad bytes replaced."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    wrapper = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace")  # universal newlines
    return "".join(wrapper.readlines())


def reference_sections(reports_path: Path, custom_section_names: dict, custom_indices: dict,
                       no_split: bool = False) -> dict[str, bytes]:
    """create_section_files.main, returning {file name: bytes} instead of writing files."""
    p_grp_folders = sorted(p for p in os.listdir(reports_path) if p.startswith("p") and len(p) == 3)
    patient_studies, study_sections = [], []
    for p_grp in p_grp_folders:
        cxr_path = reports_path / p_grp
        p_folders = sorted(p for p in os.listdir(cxr_path) if p.startswith("p"))
        for p in p_folders:
            patient_path = cxr_path / p
            if not patient_path.is_dir():
                continue
            studies = sorted(s for s in os.listdir(patient_path) if s.endswith(".txt") and s.startswith("s"))
            for s in studies:
                text = _read_text_mode(patient_path / s)
                s_stem = s[0:-4]
                if s_stem in custom_indices:
                    idx = custom_indices[s_stem]
                    patient_studies.append([s_stem, text[idx[0] : idx[1]]])
                    continue
                sections, section_names, section_idx = ref_section_text(text)
                if s_stem in custom_section_names:
                    sn = custom_section_names[s_stem]
                    idx = _list_rindex(section_names, sn)
                    patient_studies.append([s_stem, sections[idx].strip()])
                    continue
                idx = -1
                for sn in _ORDER:
                    if sn in section_names:
                        idx = _list_rindex(section_names, sn)
                        break
                if idx == -1:
                    patient_studies.append([s_stem, ""])
                else:
                    patient_studies.append([s_stem, sections[idx].strip()])
                study_sectioned = [s_stem]
                for sn in _ORDER:
                    if sn in section_names:
                        idx = _list_rindex(section_names, sn)
                        study_sectioned.append(sections[idx].strip())
                    else:
                        study_sectioned.append(None)
                study_sections.append(study_sectioned)
    out: dict[str, bytes] = {}
    if patient_studies:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["study", *_ORDER])
        for row in study_sections:
            w.writerow(row)
        out["mimic_cxr_sectioned.csv"] = buf.getvalue().encode()
        if no_split:
            buf = io.StringIO()
            csv.writer(buf).writerows(patient_studies)
            out["mimic_cxr_sections.csv"] = buf.getvalue().encode()
        else:
            n, jmp = 0, 10000
            while n < len(patient_studies):
                buf = io.StringIO()
                csv.writer(buf).writerows(patient_studies[n : n + jmp])
                out[f"mimic_cxr_{n // jmp:02d}.csv"] = buf.getvalue().encode()
                n += jmp
    return out


# ----------------------------------------------------------------------------- the oracle's own tests


def test_snippet_hand_example() -> None:
    meta = pd.DataFrame({
        "dicom_id": ["a", "b", "c", "d", "e", "f"],
        "subject_id": [1, 1, 1, 1, 2, 1],
        "study_id": [10, 11, 12, 12, 20, 13],
        "StudyDate": [20000102, 20000101, 20000102, 20000102, 20000101, 20000105],
        "StudyTime": [5.0, 9.0, 5.0, 1.0, 3.0, 0.0],
    })
    out = snippet_pairs(join_split(meta, None))
    # subject 1 sorted: b(0101) ; d(0102,t1) a(0102,t5) c(0102,t5, tie keeps input order) ; f(0105)
    assert list(out.dicom_id) == ["b", "d", "a", "c", "f", "e"]
    prior = [None if p is None else p.rsplit("/", 1)[1][:-4] for p in out.prior_image]
    assert prior == [None, "b", "b", "b", "c", None]


def test_reference_sections_hand_example() -> None:
    text = " FINAL REPORT\n INDICATION:  cough\n \n FINDINGS:  Clear lungs.\n \n IMPRESSION:  Normal.\n"
    sections, names, _ = ref_section_text(text)
    assert names == ["preamble", "indication", "findings", "impression"]
    assert [s.strip() for s in sections[1:]] == ["cough", "Clear lungs.", "Normal."]
    text = " FINAL REPORT\n EXAMINATION:  Chest.\n \n First para.\n \n Second para.\n"
    _, names, _ = ref_section_text(text)
    assert names == ["preamble", "examination", "last_paragraph"]
