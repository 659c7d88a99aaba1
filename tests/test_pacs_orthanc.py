"""PACS against a real server: Orthanc with its DICOMweb plugin, started here on a free loopback port, loaded with
the synthetic studies of ``tests.builders.dicom`` (two patients, several dates, frontal and lateral views,
MONOCHROME1, JPEG 2000, RLE, a CT study and a malformed instance), stopped after.

Runs under ``.ci/run`` (LIBRA_CI=1: a missing Orthanc fails there); skips elsewhere when Orthanc is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import FIXTURES
from tests.pacs_support import loaded_orthanc, need_orthanc, run_cli, silent_server, trickling_server

MODEL = str(FIXTURES / "tiny-libra-tac")
GEN = ["--max-new-tokens", "8"]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory):
    need_orthanc()
    with loaded_orthanc(tmp_path_factory.mktemp("pacs")) as p:
        yield p


@pytest.fixture(scope="module")
def a5_infer(pacs, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``libra infer --dicomweb --study a5 --json --fhir --sr --stow``, run once (in this process)."""
    import contextlib
    import io

    from libra_cli.cli import main

    out = tmp_path_factory.mktemp("a5")
    stdout, stderr = io.StringIO(), io.StringIO()  # capsys is per test: capture by hand
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as ex:
        main(["infer", "-m", MODEL, "--dicomweb", pacs.url, "--study", pacs.archive.studies["a5"], "--json", *GEN,
              "--fhir", str(out / "a5.json"), "--sr", str(out / "a5.dcm"), "--stow"])
    assert ex.value.code in (0, None), stderr.getvalue()
    return {"json": json.loads(stdout.getvalue()), "err": stderr.getvalue(), "dir": out}


def _name_of(arc, study_uid: str | None) -> str | None:
    return next((k for k, v in arc.studies.items() if v == study_uid), None) if study_uid else None


def test_the_right_images_and_priors_over_dicomweb(pacs) -> None:
    """Every synthetic study: the expected frontal image, --prior auto's study, or the expected error."""
    from libra_cli.pacs.client import StudyError, connect
    from libra_cli.pacs.study import Studies, resolve, studies_since

    arc = pacs.archive
    lookup = Studies(connect(pacs.url, timeout=30))
    for name, uid in arc.studies.items():
        if name in arc.current:
            res = resolve(lookup, uid, "auto")
            assert res.current.sop == arc.instances[arc.current[name]], name
            assert _name_of(arc, res.prior.study if res.prior else None) == arc.prior[name], name
        elif name != "b3":
            with pytest.raises(StudyError, match=arc.errors[name]):
                resolve(lookup, uid, "auto")
    res = resolve(lookup, arc.studies["a5"], arc.studies["a2"])  # a prior given by hand
    assert res.prior.sop == arc.instances["a2-ap"] and res.prior_mode == "given" and not res.warning
    assert resolve(lookup, arc.studies["a5"], "none").prior is None
    assert "not earlier" in resolve(lookup, arc.studies["a2"], arc.studies["a5"]).warning
    with pytest.raises(StudyError, match="belongs to another patient"):
        resolve(lookup, arc.studies["a5"], arc.studies["b1"])
    since = studies_since(lookup.client, "2023-06-01")
    assert [_name_of(arc, u) for u in since] == ["a2", "a3", "a4", "b1", "a5", "b2", "b3"]  # no CT, oldest first


def test_infer_over_dicomweb_equals_infer_on_the_files(pacs, a5_infer, tmp_path: Path, capsys) -> None:
    import highdicom  # noqa: F401 - the pacs extra
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from pydicom import dcmread

    from libra_cli.pacs.client import DicomwebClient
    from libra_cli.pacs.sr import sr_findings

    arc = pacs.archive
    code, out, err = run_cli(capsys, "infer", "-m", MODEL, str(arc.file_of("a5")), str(arc.file_of("a4")), "--json", *GEN,
                             "--fhir", str(tmp_path / "local.json"))
    assert code == 0, err
    local, remote = json.loads(out), a5_infer["json"]
    assert remote["text"] == local["text"] and remote["token_ids"] == local["token_ids"]
    assert remote["prior_is_dummy"] is False
    dw = remote["dicomweb"]
    assert dw["current_instance"] == arc.instances["a5-pa"] and dw["current_study"] == arc.studies["a5"]
    assert dw["prior_instance"] == arc.instances["a4-pa"] and dw["prior_study"] == arc.studies["a4"]
    assert dw["prior_mode"] == "auto" and dw["skipped_earlier_studies"][0]["study"] == arc.studies["a0"]
    assert remote["current"].endswith(f"/instances/{arc.instances['a5-pa']}")
    assert f"current: study {arc.studies['a5']}" in a5_infer["err"] and f"prior:   study {arc.studies['a4']}" in a5_infer["err"]
    # the FHIR report parses and names the studies; the SR reads back with the same text and references
    rep = DiagnosticReport.model_validate_json((a5_infer["dir"] / "a5.json").read_text())
    assert rep.status == "preliminary" and rep.presentedForm[0].data.decode() == remote["text"]
    assert rep.imagingStudy[0].identifier.value == f"urn:oid:{arc.studies['a5']}"
    from_files = DiagnosticReport.model_validate_json((tmp_path / "local.json").read_text())  # --fhir with files
    assert from_files.id == rep.id and from_files.imagingStudy == rep.imagingStudy  # the same report
    sr = dcmread(a5_infer["dir"] / "a5.dcm")
    assert sr_findings(sr) == (remote["text"], [arc.instances["a5-pa"], arc.instances["a4-pa"]])
    # the STOW-RS'd SR can be retrieved from Orthanc, in the current study
    stored = remote["reports"]["stored"]
    assert remote["reports"]["sr_instance"] == sr.SOPInstanceUID and stored.startswith(pacs.url)
    back = DicomwebClient(pacs.url).instance(arc.studies["a5"], sr.SeriesInstanceUID, sr.SOPInstanceUID)
    assert sr_findings(back) == sr_findings(sr) and back.Modality == "SR"


def test_no_earlier_study_uses_the_current_image_as_prior(pacs, capsys) -> None:
    code, out, err = run_cli(capsys, "infer", "-m", MODEL, "--dicomweb", pacs.url, "--study", pacs.archive.studies["b1"],
                             "--json", *GEN)
    assert code == 0, err
    res = json.loads(out)
    assert res["prior_is_dummy"] is True and res["prior"] is None and res["dicomweb"]["prior_study"] is None
    assert "no prior image given: the current image is used as the prior (dummy prior)" in err
    assert "prior:   none (no earlier study of the patient with a frontal CR/DX image)" in err


def test_bad_input_is_one_line_exit_2_and_nothing_written(pacs, tmp_path: Path, capsys) -> None:
    arc = pacs.archive
    outs = ["--fhir", str(tmp_path / "r.json"), "--sr", str(tmp_path / "r.dcm")]
    with silent_server() as silent, trickling_server() as trickle:
        cases = [
            (["--dicomweb", pacs.url, "--study", "1.2.3.4.5"], "study 1.2.3.4.5 is not on the DICOMweb server"),
            (["--dicomweb", "http://127.0.0.1:9/dicom-web", "--study", arc.studies["a5"]], "cannot reach the DICOMweb server"),
            (["--dicomweb", silent, "--study", arc.studies["a5"], "--dicomweb-timeout", "1"], "did not answer"),
            (["--dicomweb", trickle, "--study", arc.studies["a5"], "--dicomweb-timeout", "1"], "within 1 s"),
            (["--dicomweb", pacs.url, "--study", arc.studies["a3"]],
             f"has no frontal CR/DX image: series {_series(arc, 'a3-lat')} #1 'CHEST LAT' (DX): LATERAL"),
            (["--dicomweb", pacs.url, "--study", arc.studies["b3"]],
             f"not a readable DICOM image: DICOM instance {arc.instances['b3-pa']} of series"),
            (["--dicomweb", pacs.url, "--study", arc.studies["a5"], "--prior", arc.studies["b1"]],
             "belongs to another patient"),
            (["--study", arc.studies["a5"]], "give --dicomweb URL"),
            (["--dicomweb", pacs.url, "--prior", "auto", str(arc.file_of("a5"))], "use it with --study"),
            (["--dicomweb", pacs.url, "--study", arc.studies["a5"], str(arc.file_of("a5"))], "drop the image arguments"),
            (["--dicomweb", pacs.url, "--study", "1.2.x"], "is not a StudyInstanceUID"),
            ([str(arc.file_of("a5")), "--stow"], "use it with --dicomweb"),
        ]
        for args, needle in cases:
            code, out, err = run_cli(capsys, "infer", "-m", MODEL, *args, *outs, "--json", *GEN)
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert code == 2, (args, err)
            assert needle in " ".join(err.split()), (args, err)
            assert lines[-1].startswith("error:") and "Traceback" not in err, (args, err)
            assert not out and not list(tmp_path.iterdir()), (args, out)


def _series(arc, instance: str) -> str:
    from pydicom import dcmread

    return str(dcmread(arc.files[instance], stop_before_pixels=True).SeriesInstanceUID)


def test_batch_over_dicomweb_sharded_resumed_with_reports(pacs, a5_infer, tmp_path: Path, capsys) -> None:
    from pydicom import dcmread

    from libra_cli.pacs.client import DicomwebClient
    from libra_cli.pacs.sr import sr_findings

    arc = pacs.archive
    names = ["a5", "a4", "a3", "b1", "b3", "a2"]
    studies = tmp_path / "studies.txt"
    studies.write_text("StudyInstanceUID\n" + "\n".join(arc.studies[n] for n in names) + "\nnot-a-uid\n")
    out = tmp_path / "answers.jsonl"
    args = ["batch", "-m", MODEL, "--dicomweb", pacs.url, "--studies", str(studies), "--out", str(out), *GEN,
            "-b", "2", "--fhir", str(tmp_path / "fhir"), "--sr", str(tmp_path / "sr"), "--stow", "-q"]
    for k in (0, 1):  # two shards, one after the other: the second merges
        code, _, err = run_cli(capsys, *args, "--num-shards", "2", "--shard", str(k))
        assert code == 1, err  # a3, b3 and the bad line failed
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [_name_of(arc, a["question_id"]) for a in answers] == ["a5", "a4", "b1", "a2"]  # list order
    for a in answers:
        sel, name = a["metadata"]["study_selection"], _name_of(arc, a["question_id"])
        assert sel["current_study"] == a["question_id"] and sel["current_instance"] == arc.instances[arc.current[name]]
        assert _name_of(arc, sel["prior_study"]) == arc.prior[name] and a["metadata"]["prior_is_dummy"] == (sel["prior_study"] is None)
        assert (tmp_path / "fhir" / f"{a['question_id']}.json").is_file()
        assert sr_findings(dcmread(tmp_path / "sr" / f"{a['question_id']}.dcm"))[0] == a["text"]
    assert answers[0]["text"] == a5_infer["json"]["text"]  # batch answer == libra infer's
    errs = [json.loads(line) for line in Path(f"{out}.errors.jsonl").read_text().splitlines()]
    assert [(_name_of(arc, e["question_id"]) or e["question_id"], e["stage"]) for e in errs] == [
        ("a3", "input"), ("b3", "image"), ("not-a-uid", "input")]
    assert "no frontal" in errs[0]["reason"] and "not a readable DICOM image" in errs[1]["reason"]
    logs = [json.loads(line) for p in tmp_path.glob("answers.jsonl.reports*.jsonl") for line in p.read_text().splitlines()]
    assert sorted(r["question_id"] for r in logs) == sorted(a["question_id"] for a in answers)
    client = DicomwebClient(pacs.url)
    for r in logs:  # every SR was stored in its study
        back = client.instance(r["question_id"], r["sr_series"], r["sr_instance"])
        assert sr_findings(back)[0] == next(a["text"] for a in answers if a["question_id"] == r["question_id"])
    # a rerun answers nothing again and writes no report again; only the failed studies are looked up again
    before = out.read_bytes()
    code, outj, err = run_cli(capsys, *args[:-1], "--json")
    stats = json.loads(outj)
    assert code == 1 and stats["answered"] == 0 and stats["resumed"] == 4 and stats["reports"]["written"] == 0
    assert out.read_bytes() == before


def test_batch_since_date_with_prior_none(pacs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "since.jsonl"
    code, _, err = run_cli(capsys, "batch", "-m", MODEL, "--dicomweb", pacs.url, "--since", "2024-02-01", "--prior", "none",
                           "--out", str(out), *GEN, "-q")
    assert code == 1, err  # b2 (lateral only) and b3 (malformed) fail
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [_name_of(pacs.archive, a["question_id"]) for a in answers] == ["b1", "a5"]
    assert all(a["metadata"]["prior_is_dummy"] and a["metadata"]["study_selection"]["prior_mode"] == "none"
               for a in answers)


def test_batch_refuses_a_server_that_is_down(tmp_path: Path, capsys) -> None:
    need_orthanc()
    studies = tmp_path / "s.txt"
    studies.write_text("1.2.3\n")
    code, out, err = run_cli(capsys, "batch", "-m", MODEL, "--dicomweb", "http://127.0.0.1:9/dicom-web", "--studies",
                             str(studies), "--out", str(tmp_path / "a.jsonl"))
    assert code == 2 and "cannot reach the DICOMweb server" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.txt"]


def test_server_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A server with HTTP basic authentication: refused without credentials, used with them (from the environment)."""
    from libra_cli.pacs.client import connect
    from libra_cli.pacs.study import Studies, resolve

    with loaded_orthanc(tmp_path, users={"libra": "s3cret"}) as p:
        code, _, err = run_cli(capsys, "infer", "-m", MODEL, "--dicomweb", p.url, "--study", p.archive.studies["a2"])
        assert code == 2 and "refused" in err and "HTTP 401" in err and "LIBRA_DICOMWEB_USER" in err
        monkeypatch.setenv("LIBRA_DICOMWEB_USER", "libra")
        monkeypatch.setenv("LIBRA_DICOMWEB_PASSWORD", "s3cret")
        res = resolve(Studies(connect(p.url)), p.archive.studies["a2"])
        assert res.prior.sop == p.archive.instances["a1-pa"]


def test_web_page_offers_fhir_and_sr_for_dicom_uploads(pacs) -> None:
    import pydicom
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    from libra_cli.generation import GenerationSettings
    from libra_cli.pacs.sr import sr_findings
    from libra_cli.requests import ModelSpec
    from libra_cli.serve.server import ServeOptions, Server

    arc = pacs.archive
    server = Server(ServeOptions(models=[MODEL], load=ModelSpec(MODEL, device="cpu")))
    last = list(server.run(None, str(arc.file_of("a5")), str(arc.file_of("a4")), None, None,
                           GenerationSettings(max_new_tokens=8)))[-1]
    assert last.error is None and last.fhir and last.sr
    assert DiagnosticReport.model_validate_json(Path(last.fhir).read_text()).presentedForm[0].data.decode() == last.text
    assert sr_findings(pydicom.dcmread(last.sr)) == (last.text, [arc.instances["a5-pa"], arc.instances["a4-pa"]])
    jpeg = Path(last.download).with_suffix(".jpg")
    from PIL import Image

    Image.new("L", (64, 64), 128).save(jpeg)
    last = list(server.run(None, str(jpeg), None, None, None, GenerationSettings(max_new_tokens=4)))[-1]
    assert last.error is None and last.download and last.fhir is None and last.sr is None  # no study to link to
