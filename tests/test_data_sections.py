"""``libra data extract-sections``: byte-equal to the original scripts on synthetic reports."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import numpy as np
import pytest

from libra_cli.cli import main
from libra_cli.data import sections as S
from libra_cli.errors import InputError
from tests.builders.mimic import make_report, write_report_tree
from tests.test_data_reference import ref_section_text, reference_sections

SLICES = {k: list(v) for k, v in S.SPECIAL_SLICE.items()}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reports") / "files"
    write_report_tree(root, 2500, seed=11)
    return root


@pytest.fixture(scope="module")
def reference(tree: Path) -> dict[str, bytes]:
    return reference_sections(tree, S.SPECIAL_SECTION, SLICES)


@pytest.mark.parametrize("workers", [1, 2])
def test_equals_original_scripts(tree: Path, reference: dict[str, bytes], tmp_path: Path, workers: int) -> None:
    stats = S.extract_sections(tree, tmp_path, workers=workers, batch_dirs=37)
    for name, data in reference.items():
        assert (tmp_path / name).read_bytes() == data, name
    assert stats.chunk_files == [n for n in reference if n != "mimic_cxr_sectioned.csv"]
    assert stats.reports == 2500
    assert stats.special_cases == 8
    # the synthetic corpus really has the awkward cases
    for kind in ("no section headers", "non-UTF-8 bytes replaced", "utf-8 BOM removed", "empty file", "no usable section"):
        assert stats.issue_counts.get(kind, 0) > 0, kind
    log = list(csv.reader(open(tmp_path / "extract_sections_issues.csv", encoding="utf-8")))
    assert log[0] == ["path", "issue"] and len(log) - 1 == sum(stats.issue_counts.values())


def test_chunking_and_no_split(tree: Path, tmp_path: Path) -> None:
    ref = reference_sections(tree, S.SPECIAL_SECTION, SLICES, no_split=True)
    S.extract_sections(tree, tmp_path / "one", workers=2, no_split=True)
    assert (tmp_path / "one" / "mimic_cxr_sections.csv").read_bytes() == ref["mimic_cxr_sections.csv"]
    # small chunks: the same rows, cut every 700
    stats = S.extract_sections(tree, tmp_path / "many", workers=1, chunk_rows=700)
    assert stats.chunk_files == [f"mimic_cxr_{i:02d}.csv" for i in range(4)]
    joined = b"".join((tmp_path / "many" / n).read_bytes() for n in stats.chunk_files)
    assert joined == ref["mimic_cxr_sections.csv"]
    rows = list(csv.reader(io.StringIO((tmp_path / "many" / "mimic_cxr_00.csv").read_text(encoding="utf-8"))))
    assert len(rows) == 700


def test_parent_folder_accepted_and_stale_notice(tree: Path, tmp_path: Path) -> None:
    (tmp_path / "mimic_cxr_99.csv").write_text("old")
    stats = S.extract_sections(tree.parent, tmp_path, workers=1)
    assert stats.reports == 2500
    assert stats.stale_files == ["mimic_cxr_99.csv"]


def test_split_sections_equals_reference_on_fuzz() -> None:
    rng = np.random.default_rng(3)
    pyr = random.Random(3)
    pieces = ["\n ", "\n", " ", "FINDINGS", "IMPRESSION", ":", ": ", ":\n", "CHEST, PA AND LAT", "Clear.",
              "\n \n", "comparison", "COMPARISON", "(PORTABLE)", "WET READ", "a,b", "\r", "X-RAY", "/", "-", "NOTE"]
    for _ in range(3000):
        text = "".join(pyr.choice(pieces) for _ in range(pyr.randint(0, 25)))
        sec, names = S.split_sections(text)
        rsec, rnames, _ = ref_section_text(text)
        assert (sec, names) == (rsec, rnames), repr(text)
    for _ in range(500):
        text = make_report(rng).decode("utf-8", errors="replace").replace("\r\n", "\n")
        sec, names = S.split_sections(text)
        rsec, rnames, _ = ref_section_text(text)
        assert (sec, names) == (rsec, rnames)


def test_special_cases_and_rules() -> None:
    text = " FINAL REPORT\n RECOMMENDATION(S):  Call.\n \n FINDINGS:  Clear.\n"
    res = S.section_study("s50913680", text)  # special: take 'recommendations'
    assert res.text == "Call." and res.sectioned is None
    res = S.section_study("s50525523", "x" * 400)  # special: fixed slice
    assert res.text == "x" * 148 and res.sectioned is None
    res = S.section_study("s56451190", " A\n FINDINGS:  only findings\n")  # special section absent
    assert res.text == "only findings" and any("not found" in i for i in res.issues)
    # findings first; the *last* section of a name wins; empty findings dropped
    res = S.section_study("s1", " X\n FINDINGS:  one\n IMPRESSION:  imp\n FINDINGS:  two\n")
    assert res.text == "two" and res.sectioned[:2] == ["two", "imp"]
    res = S.section_study("s2", " X\n FINDINGS: \n IMPRESSION:  imp\n")
    assert res.text == "imp" and res.sectioned[0] is None
    # header normalisation
    assert S.normalize_header("COMPARISONS") == "comparison"
    assert S.normalize_header("NDICATION") == "impression"  # the corpus' own rule
    assert S.normalize_header("PA AND LAT VIEWS") == "findings"
    assert S.normalize_header("FINAL IMPRESSION") == "impression"
    assert S.normalize_header("HISTORY AND COMPARISON") == "history"
    assert S.normalize_header("PROVIDER") == "provider"


def test_decode_report() -> None:
    assert S.decode_report(b"\xef\xbb\xbfa\r\nb\rc") == ("a\nb\nc", ["utf-8 BOM removed"])
    text, issues = S.decode_report(b"caf\xe9")
    assert text == "caf\ufffd" and issues == ["non-UTF-8 bytes replaced"]
    assert S.decode_report(b"") == ("", ["empty file"])


def test_csv_field_matches_csv_writer() -> None:
    pyr = random.Random(5)
    alphabet = ['"', ",", "\r", "\n", " ", "a", "é", "\t", ";", "'"]
    for _ in range(2000):
        fields = ["".join(pyr.choice(alphabet) for _ in range(pyr.randint(0, 6))) for _ in range(pyr.randint(2, 5))]
        fields = [None if pyr.random() < 0.1 else f for f in fields]
        buf = io.StringIO()
        csv.writer(buf).writerow(fields)
        assert S.csv_row(fields) == buf.getvalue()


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        S.extract_sections(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no report folders"):
        S.extract_sections(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "nofiles" / "p10" / "p10000001").mkdir(parents=True)
    with pytest.raises(InputError, match="no sSTUDY.txt reports"):
        S.extract_sections(tmp_path / "nofiles", tmp_path / "out")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        S.extract_sections(f, tmp_path / "out")


def test_unreadable_file_is_reported_not_fatal(tmp_path: Path) -> None:
    d = tmp_path / "files" / "p10" / "p10000001"
    d.mkdir(parents=True)
    (d / "s50000001.txt").write_text(" A\n FINDINGS:  ok\n")
    (d / "s50000002.txt").mkdir()  # a folder named like a report: cannot be read
    stats = S.extract_sections(tmp_path / "files", tmp_path / "out", workers=1)
    assert stats.reports == 1
    assert any(k.startswith("unreadable file") for k in stats.issue_counts)


def test_cli(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["data", "extract-sections", str(tree), "--out", str(tmp_path), "-j", "2"])
    assert exc.value.code == 0
    err = capsys.readouterr().err
    assert "reports" in err and "2,500" in err
    assert (tmp_path / "mimic_cxr_sectioned.csv").exists()
    with pytest.raises(SystemExit) as exc:
        main(["data", "extract-sections", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "does not exist" in err
