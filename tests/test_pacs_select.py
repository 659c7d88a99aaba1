"""PACS without a server: which image and which prior (pure header rules), DICOM decoding of fetched datasets,
and the FHIR / SR writers read back with fhir.resources, pydicom and highdicom."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from tests.pacs_support import need_packages


def _hdr(view: str = "PA", *, study: str = "1.1", series: str = "1.1.1", sop: str = "1.1.1.1", modality: str = "DX",
         patient: str = "P1", date: str = "20240101", time: str = "100000", **kw: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.Modality, ds.ViewPosition, ds.PatientID, ds.StudyDate, ds.StudyTime = modality, view, patient, date, time
    ds.Rows = ds.Columns = 8
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def _im(*args: object, **kw: object):  # noqa: ANN202
    from libra_cli.pacs.select import Instance

    return Instance.from_header(_hdr(*args, **kw))


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def test_view_fallbacks() -> None:
    from libra_cli.pacs.select import view_of

    assert view_of(_hdr("AP")) == ("AP", "ViewPosition")
    assert view_of(_hdr("", ViewCodeSequence=[_code("272479007", "SCT", "postero-anterior")])) == ("PA", "ViewCodeSequence")
    assert view_of(_hdr("", ViewCodeSequence=[_code("R-10206", "SRT", "antero-posterior")])) == ("AP", "ViewCodeSequence")
    assert view_of(_hdr("", ViewCodeSequence=[_code("X1", "99LOCAL", "Postero-Anterior")])) == ("PA", "ViewCodeSequence")
    assert view_of(_hdr("", SeriesDescription="Chest PA erect")) == ("PA", "SeriesDescription")
    assert view_of(_hdr("", SeriesDescription="CHEST LAT")) == ("LATERAL", "SeriesDescription")
    assert view_of(_hdr("", ProtocolName="Thorax AP portable")) == ("AP", "ProtocolName")
    assert view_of(_hdr("", SeriesDescription="CHEST PA AND LAT")) == ("", "")  # names two views: not used
    assert view_of(_hdr("")) == ("", "")


def test_frontal_choice_order_and_errors() -> None:
    from libra_cli.pacs.client import StudyError
    from libra_cli.pacs.select import choose_frontal

    ap, pa = _im("AP", sop="1"), _im("PA", sop="2", series="1.1.2")
    lat = _im("LATERAL", sop="3", series="1.1.3", SeriesDescription="CHEST LAT", SeriesNumber=3)
    assert choose_frontal([lat, ap, pa], "1.1").sop == "2"  # PA before AP
    processing = _im("PA", sop="4", PresentationIntentType="FOR PROCESSING")
    assert choose_frontal([processing, ap], "1.1").sop == "1"  # an AP for presentation before a raw PA
    early = _im("PA", sop="5", AcquisitionDateTime="20240101100000")
    late = _im("PA", sop="6", AcquisitionDateTime="20240101101500.5")
    assert choose_frontal([early, late], "1.1").sop == "6"  # a repeat exposure: the latest
    ct = _im("", sop="7", modality="CT")
    sr = _im("", sop="8", modality="DX", SOPClassUID="1.2.840.10008.5.1.4.1.1.88.33")
    assert choose_frontal([ct, sr, ap], "1.1").sop == "1"
    with pytest.raises(StudyError) as e:
        choose_frontal([lat, ct], "1.1")
    msg = str(e.value)
    assert "no frontal CR/DX image" in msg and "series 1.1.3 #3 'CHEST LAT' (DX): LATERAL" in msg and "\n" not in msg
    with pytest.raises(StudyError, match=r"no CR/DX image \(modalities in the study: CT\)"):
        choose_frontal([ct], "1.1")
    with pytest.raises(StudyError, match="no frontal CT image"):  # --modality CT: a CT has no frontal view
        choose_frontal([ct], "1.1", modalities=("CT",))
    unknown = _im("", sop="9", series="1.1.9")
    with pytest.raises(StudyError, match="series 1.1.9 .*view unknown"):
        choose_frontal([unknown], "1.1")


def test_earlier() -> None:
    from libra_cli.pacs.select import earlier

    assert earlier("20230101", "", "20240101", "") is True
    assert earlier("20240102", "", "20240101", "") is False
    assert earlier("20240101", "080000.000000", "20240101", "140000.000000") is True
    assert earlier("20240101", "140000.000000", "20240101", "140000.000000") is False  # same moment: not earlier
    assert earlier("20240101", "", "20240101", "140000.000000") is None  # same day, no time: cannot tell
    assert earlier("", "", "20240101", "") is None


def _records(*rows: tuple[str, str, str, str]) -> list:
    from libra_cli.pacs.select import StudyRecord

    return [StudyRecord(uid, date, time, patient) for uid, date, time, patient in rows]


def test_prior_auto_picks_the_right_study() -> None:
    """Several earlier studies, same-day studies, a lateral-only study, another patient's study on the same day."""
    from libra_cli.pacs.select import choose_prior

    cur = _im("PA", study="9", date="20240201", time="101500")
    meta = {
        "1": [_im("PA", study="1", date="20230110", time="093000")],
        "2": [_im("AP", study="2", date="20230601", time="080000", modality="CR")],
        "3": [_im("LATERAL", study="3", date="20230601", time="140000")],  # lateral only
        "4": [_im("PA", study="4", date="20230601", time="160000"), _im("LL", study="4", sop="4.9")],
        "5": [_im("", study="5", date="20240115", modality="CT")],  # no CR/DX image
        "6": [_im("AP", study="6", date="20240201", time="090000", patient="P2")],  # another patient, same day
        "7": [_im("PA", study="7", date="20240201", time="120000")],  # later the same day
        "8": [_im("PA", study="8", date="20240301")],  # later
    }
    studies = _records(("1", "20230110", "093000", "P1"), ("2", "20230601", "080000.000000", "P1"),
                       ("3", "20230601", "140000.000000", "P1"), ("4", "20230601", "160000.000000", "P1"),
                       ("5", "20240115", "120000.000000", "P1"), ("6", "20240201", "090000.000000", "P2"),
                       ("7", "20240201", "120000.000000", "P1"), ("8", "20240301", "", "P1"),
                       ("9", "20240201", "101500.000000", "P1"))
    asked: list[str] = []

    def metadata(uid: str) -> list:
        asked.append(uid)
        return meta[uid]

    got = choose_prior(cur, studies, metadata)
    assert got.prior is not None and got.prior.study == "4"
    assert got.skipped == [{"study": "5", "reason": "no CR/DX image (modalities in the study: CT)"}]
    assert asked == ["5", "4"]  # newest first; later, other-patient and the current study never looked at
    # the study on 2023-06-01 16:00: the lateral-only 14:00 study is skipped, 08:00 is the prior
    four = meta["4"][0]
    got = choose_prior(four, studies, metadata)
    assert got.prior.study == "2" and [s["study"] for s in got.skipped] == ["3"]
    # the first study: no prior
    got = choose_prior(meta["1"][0], studies, metadata)
    assert got.prior is None and "no earlier study" in got.note
    # another patient's earlier study on the same day is never the prior, even from a server that matched loosely
    other = _im("AP", study="10", date="20240201", time="180000", patient="P2")
    assert choose_prior(other, studies, metadata).prior.study == "6"
    # same day without a study time on either side: cannot be ordered, so skipped (and said)
    untimed = _im("PA", study="11", date="20230601", time="")
    got = choose_prior(untimed, studies, metadata)
    assert got.prior.study == "1" and {s["study"] for s in got.skipped} == {"2", "3", "4"}
    # the same PatientID from another issuer is another patient
    issued = _im("PA", study="12", date="20250101", IssuerOfPatientID="HOSP-A")
    meta["13"] = [_im("PA", study="13", date="20241201", IssuerOfPatientID="HOSP-B")]
    recs = [*studies, *_records(("13", "20241201", "", "P1"))]
    assert choose_prior(issued, recs, metadata).prior.study == "8"


def test_study_list_file(tmp_path: Path) -> None:
    from libra_cli.pacs.batch import read_study_list

    f = tmp_path / "studies.csv"
    f.write_text("StudyInstanceUID,prior\n1.2.3\n# a comment\n1.2.4, none\n\n1.2.5\t1.2.3\nnot-a-uid\n1.2.3\n1.2.6 sometimes\n")
    entries, errors = read_study_list(f)
    assert entries == [(0, "1.2.3", ""), (1, "1.2.4", "none"), (2, "1.2.5", "1.2.3")]
    assert [(e.index, e.question_id, e.where) for e in errors] == [(3, "not-a-uid", "studies.csv:7"),
                                                                   (4, "1.2.3", "studies.csv:8"),
                                                                   (5, "1.2.6", "studies.csv:9")]
    assert "listed twice (first at line 2)" in errors[1].reason


def test_fetched_datasets_decode_as_the_files(tmp_path: Path) -> None:
    """JPEG 2000, RLE and MONOCHROME1 decode to the same picture; a Dataset decodes as its file does."""
    need_packages()
    import pydicom

    from libra_cli.images import ImageProcessorConfig, load_image, preprocess
    from tests.builders.dicom import Spec, make_instance

    cfg = ImageProcessorConfig(size={"shortest_edge": 70}, crop_size={"height": 70, "width": 70})
    arrays = []
    for i, (enc, photo) in enumerate([("raw", "MONOCHROME2"), ("j2k", "MONOCHROME2"), ("rle", "MONOCHROME1"),
                                      ("j2k", "MONOCHROME1")]):
        path = tmp_path / f"{i}.dcm"
        make_instance(Spec("P", "s", "20240101", "100000", "PA", encoding=enc, photometric=photo, seed=3), f"x{i}") \
            .save_as(path, enforce_file_format=True)
        ds = pydicom.dcmread(path)
        from_file, from_ds = np.asarray(load_image(str(path))), np.asarray(load_image(ds))
        assert np.array_equal(from_file, from_ds)
        arrays.append(preprocess(load_image(ds), cfg))
    for a in arrays[1:]:
        assert np.array_equal(arrays[0], a)


def _source(tmp_path: Path):  # noqa: ANN202
    from libra_cli.pacs.outputs import ReportSource
    from tests.builders.dicom import SPECS, make_instance

    paths = {}
    for name in ("a5-pa", "a4-pa"):
        paths[name] = tmp_path / f"{name}.dcm"
        make_instance(SPECS[name], name).save_as(paths[name], enforce_file_format=True)
    return ReportSource.from_files(str(paths["a5-pa"]), str(paths["a4-pa"])), paths


TEXT = "Heart size is normal. Small left pleural effusion, new since the prior study; “quoted” <b>ü</b>."


def test_fhir_report_parses_and_links_the_studies(tmp_path: Path) -> None:
    need_packages()
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    from libra_cli.pacs.outputs import ReportTargets

    source, _ = _source(tmp_path)
    done = ReportTargets(fhir=tmp_path / "r.json").write(TEXT, source, model="libra-v1.0-7b", revision="abc123")
    raw = Path(done["fhir"]).read_text()
    rep = DiagnosticReport.model_validate_json(raw)  # parses with fhir.resources
    assert rep.status == "preliminary"
    assert rep.presentedForm[0].data.decode("utf-8") == TEXT  # fhir.resources decodes base64Binary
    assert base64.b64decode(json.loads(raw)["presentedForm"][0]["data"]).decode("utf-8") == TEXT
    assert "research use only" in rep.presentedForm[0].title and "research use only" in rep.code.text
    assert [s.identifier.value for s in rep.imagingStudy] == [f"urn:oid:{source.current.study}",
                                                              f"urn:oid:{source.prior.study}"]
    assert {s.identifier.system for s in rep.imagingStudy} == {"urn:dicom:uid"}
    assert rep.meta.security[0].code == "AIAST"
    device = next(c for c in rep.contained if c.get_resource_type() == "Device")
    assert device.deviceName[0].name == "libra-v1.0-7b" and device.version[0].value == "abc123"
    assert "AI-generated" in rep.text.div and "&lt;b&gt;" in rep.text.div
    assert rep.subject.identifier.value == "PA001" and rep.basedOn[0].identifier.value == "ACC-a5"
    assert rep.effectiveDateTime.isoformat() == "2024-02-01"
    assert json.loads(raw)["resourceType"] == "DiagnosticReport"


def test_sr_reads_back_with_text_and_references(tmp_path: Path) -> None:
    need_packages()
    import highdicom as hd
    import pydicom

    from libra_cli.pacs.outputs import ReportTargets
    from libra_cli.pacs.sr import sr_findings

    source, paths = _source(tmp_path)
    done = ReportTargets(sr=tmp_path / "r.dcm").write(TEXT, source, model="libra-v1.0-7b", revision=None)
    ds = pydicom.dcmread(done["sr"])
    text, refs = sr_findings(ds)
    assert text == TEXT and refs == [source.current.sop, source.prior.sop]
    doc = hd.sr.srread(done["sr"])
    evidence = {e[2] for e in doc.get_evidence()}
    assert evidence == {source.current.sop, source.prior.sop}
    assert ds.StudyInstanceUID == source.current.study and ds.PatientID == "PA001"
    assert (ds.VerificationFlag, ds.PreliminaryFlag, ds.CompletionFlag) == ("UNVERIFIED", "PRELIMINARY", "PARTIAL")
    assert ds.ContentQualification == "RESEARCH" and "RESEARCH USE ONLY" in ds.SeriesDescription
    comment = next(c for c in ds.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "121106")
    assert "AI-generated" in comment.TextValue and "research use only" in comment.TextValue
    again = ReportTargets(sr=tmp_path / "r2.dcm").write(TEXT, source, model="libra-v1.0-7b", revision=None)
    assert again["sr_instance"] == done["sr_instance"]  # the same report, the same UID: a re-STOW replaces it


def test_report_targets_refuse_impossible_outputs(tmp_path: Path) -> None:
    need_packages()
    from libra_cli.errors import InputError
    from libra_cli.pacs.outputs import ReportSource, ReportTargets

    with pytest.raises(InputError, match="--stow .* with --dicomweb"):
        ReportTargets(stow=True).check(dicomweb=False)
    with pytest.raises(InputError, match="is a folder"):
        ReportTargets(fhir=tmp_path).check(dicomweb=False)
    with pytest.raises(InputError, match="does not exist"):
        ReportTargets(sr=tmp_path / "no" / "r.dcm").check(dicomweb=False)
    with pytest.raises(InputError, match="is a file"):
        (tmp_path / "f").write_text("x")
        ReportTargets(sr=tmp_path / "f", folders=True).check(dicomweb=True)
    jpg = tmp_path / "x.jpg"
    jpg.write_bytes(b"\xff\xd8\xff\xe0not really")
    with pytest.raises(InputError, match="need DICOM inputs"):
        ReportSource.from_files(str(jpg), None)


def test_ci_installs_and_runs_the_pacs_tests() -> None:
    """.ci/run must not skip the Orthanc tests: it sets LIBRA_CI=1, and install.sh installs Orthanc and the extra."""
    import re

    root = Path(__file__).resolve().parents[1]
    assert re.search(r"^export .*\bLIBRA_CI=1\b", (root / ".ci" / "run").read_text(), re.M)
    install = (root / "scripts" / "install.sh").read_text()
    assert "orthanc orthanc-dicomweb" in install and re.search(r'-e "\.\[[^"]*\bpacs\b', install)
    import tomllib

    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(re.search(r"libra-cli\[[^\]]*\bpacs\b", req) for req in extras["dev"])
    pacs = " ".join(f'"{req}' for req in extras["pacs"])
    assert all(f'"{name}==' in pacs for name in ("dicomweb-client", "highdicom", "fhir.resources", "pylibjpeg-openjpeg"))
