"""``libra data build``: pairs + sections -> training JSON / questions JSONL / HF dataset."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from libra_cli.cli import main
from libra_cli.data import FINDINGS_QUERY
from libra_cli.data.build import BuildOptions, parse_context, run_build, template_fields
from libra_cli.errors import InputError

PAIRS_HEADER = ["dicom_id", "subject_id", "study_id", "StudyDate", "StudyTime", "ViewPosition", "split", "image",
                "prior_dicom_id", "prior_study_id", "prior_StudyDate", "prior_StudyTime", "prior_image", "days_between"]


def _img(subj: int, study: int, dicom: str) -> str:
    return f"files/p{str(subj)[:2]}/p{subj}/s{study}/{dicom}.jpg"


@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, Path]:
    rows = [
        # dicom, subject, study, date, split, prior (dicom, study)
        ("d1", 10000001, 50000001, 21800101, "train", None),
        ("d2", 10000001, 50000002, 21800105, "train", ("d1", 50000001)),
        ("d3", 10000001, 50000002, 21800105, "train", ("d1", 50000001)),  # same study, 2nd image
        ("d4", 10000002, 50000003, 21800101, "test", None),  # study without findings -> dropped
        ("d5", 10000002, 50000004, 21800110, "test", ("d4", 50000003)),
        ("d6", 10000003, 50000005, 21800110, "train", None),  # study missing from sections -> dropped
    ]
    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(PAIRS_HEADER)
        for d, s, st, date, sp, prior in rows:
            p = [prior[0], prior[1], 21800101, 1.0, _img(s, prior[1], prior[0]), 4] if prior else ["", "", "", "", "", ""]
            w.writerow([d, s, st, date, 5.0, "PA", sp, _img(s, st, d), *p])
    sections = tmp_path / "mimic_cxr_sectioned.csv"
    with open(sections, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["study", "findings", "impression", "indication", "comparison", "technique", "history",
                    "examination", "last_paragraph"])
        w.writerow(["s50000001", "Lungs clear.\n \n Heart normal.", "Normal.", "Cough.", "", "PA and lateral.", "", "CHEST", ""])
        w.writerow(["s50000002", "Small effusion, \"new\".", "Effusion.", "", "Prior ___.", "", "Fever.", "", ""])
        w.writerow(["s50000003", "", "Only impression.", "Dyspnea.", "", "", "", "", ""])
        w.writerow(["s50000004", "Stable.", "", "", "", "", "", "", ""])
    return {"pairs": pairs, "sections": sections, "dir": tmp_path}


def test_training_json_and_questions(inputs: dict[str, Path]) -> None:
    d = inputs["dir"]
    stats = run_build(inputs["pairs"], inputs["sections"], d / "train.json", d / "q.jsonl", BuildOptions())
    assert (stats.rows, stats.kept, stats.with_prior) == (6, 4, 3)
    assert (stats.dropped_no_target_images, stats.dropped_no_target_studies) == (2, 2)
    train = json.loads((d / "train.json").read_text())
    assert [t["id"] for t in train] == ["d1", "d2", "d3", "d5"]
    assert train[0] == {
        "id": "d1",
        "image": [_img(10000001, 50000001, "d1")],
        "conversations": [
            {"from": "human", "value": "<image>\n" + FINDINGS_QUERY},
            {"from": "gpt", "value": "Lungs clear. Heart normal."},
        ],
    }
    assert train[1]["image"] == [_img(10000001, 50000002, "d2"), _img(10000001, 50000001, "d1")]
    assert train[1]["conversations"][1]["value"] == 'Small effusion, "new".'
    qs = [json.loads(line) for line in (d / "q.jsonl").read_text().splitlines()]
    assert [q["question_id"] for q in qs] == ["d1", "d2", "d3", "d5"]
    assert set(qs[0]) == {"question_id", "image", "text", "reference"}
    assert qs[0]["text"] == FINDINGS_QUERY and qs[0]["reference"] == "Lungs clear. Heart normal."


def test_context_template_split_and_prior_options(inputs: dict[str, Path]) -> None:
    d = inputs["dir"]
    opts = BuildOptions(context=parse_context("indication,history,comparison,technique"), split_name="train",
                        missing_prior="self", image_prefix="mimic/")
    stats = run_build(inputs["pairs"], inputs["sections"], None, d / "q.jsonl", opts)
    assert stats.after_split == 4 and stats.kept == 3
    qs = [json.loads(line) for line in (d / "q.jsonl").read_text().splitlines()]
    assert qs[0]["text"] == (FINDINGS_QUERY + " INDICATION: Cough. HISTORY: None COMPARISON: None TECHNIQUE: PA and lateral.")
    assert qs[0]["image"] == ["mimic/" + _img(10000001, 50000001, "d1")] * 2
    opts = BuildOptions(template="{query}\nHistory: {history}", query="Describe.", missing_text="n/a",
                        missing_prior="drop", target="impression", compact_whitespace=False)
    stats = run_build(inputs["pairs"], inputs["sections"], None, d / "q2.jsonl", opts)
    qs = [json.loads(line) for line in (d / "q2.jsonl").read_text().splitlines()]
    assert [q["question_id"] for q in qs] == ["d2", "d3"] and stats.dropped_no_prior == 2
    assert qs[0]["text"] == "Describe.\nHistory: Fever." and qs[0]["reference"] == "Effusion."


def test_split_file_attaches_split(inputs: dict[str, Path]) -> None:
    d = inputs["dir"]
    split = d / "split.csv"
    split.write_text("dicom_id,study_id,subject_id,split\n" + "".join(
        f"d{i},0,0,{'validate' if i < 3 else 'train'}\n" for i in range(1, 7)))
    stats = run_build(inputs["pairs"], inputs["sections"], None, d / "q.jsonl",
                      BuildOptions(split_name="validate"), split_path=split)
    assert stats.after_split == 2 and stats.kept == 2


def test_hf_dataset(inputs: dict[str, Path]) -> None:
    datasets = pytest.importorskip("datasets")
    d = inputs["dir"]
    run_build(inputs["pairs"], inputs["sections"], None, None, BuildOptions(), hf_out=d / "hf")
    ds = datasets.load_from_disk(str(d / "hf"))
    assert len(ds) == 4
    assert {"main_image", "prior_image", "default_prompt", "findings", "impression", "indication"} <= set(ds.column_names)
    assert ds[0]["prior_image"] is None and ds[1]["prior_image"] == _img(10000001, 50000001, "d1")


def test_errors(inputs: dict[str, Path], tmp_path: Path) -> None:
    p, s = inputs["pairs"], inputs["sections"]
    with pytest.raises(InputError, match="nothing to write"):
        run_build(p, s, None, None, BuildOptions())
    with pytest.raises(InputError, match="unknown field"):
        template_fields("{query} {nope}")
    with pytest.raises(InputError, match="not a valid format"):
        template_fields("{query")
    with pytest.raises(InputError, match="not a section"):
        run_build(p, s, None, tmp_path / "q.jsonl", BuildOptions(target="summary"))
    with pytest.raises(InputError, match="does not occur"):
        run_build(p, s, None, tmp_path / "q.jsonl", BuildOptions(split_name="valid"))
    with pytest.raises(InputError, match="unknown section"):
        parse_context("indication,weather")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="lacks column"):
        run_build(bad, s, None, tmp_path / "q.jsonl", BuildOptions())
    with pytest.raises(InputError, match="'study' column"):
        run_build(p, bad, None, tmp_path / "q.jsonl", BuildOptions())


def test_cli(inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    d = inputs["dir"]
    with pytest.raises(SystemExit) as exc:
        main(["data", "build", "--pairs", str(inputs["pairs"]), "--sections", str(inputs["sections"]),
              "--out-json", str(d / "t.json"), "--context", "all"])
    assert exc.value.code == 0
    err = capsys.readouterr().err
    assert "dropped: no findings" in err and "2 images in 2 studies" in err
    with pytest.raises(SystemExit) as exc:
        main(["data", "build", "--pairs", str(inputs["pairs"]), "--sections", str(inputs["sections"]),
              "--out-json", str(d / "t.json"), "--template", "{query} {weather}"])
    assert exc.value.code == 2
    assert "unknown field" in capsys.readouterr().err
