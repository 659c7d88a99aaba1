"""``libra data pair-priors``: equal to the README snippet on adversarial synthetic metadata."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from libra_cli.cli import main
from libra_cli.data.pairing import PairOptions, parse_views, prior_positions, run_pair_priors, view_class
from libra_cli.errors import InputError
from tests.builders.mimic import make_metadata, write_metadata_csv, write_split_csv
from tests.test_data_reference import join_split, mimic_image, snippet_pairs


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """~200 subjects, ~1.2k images: same-day studies, exact ties, midnight crossings, missing views."""
    d = tmp_path_factory.mktemp("pairs")
    meta, split = make_metadata(200, seed=7, split_p=(0.8, 0.1, 0.1))
    write_metadata_csv(meta, d / "meta.csv.gz")
    write_split_csv(split, meta, d / "split.csv.gz")
    meta_df = pd.read_csv(d / "meta.csv.gz", keep_default_na=False,
                          dtype={"dicom_id": str, "ViewPosition": str})[list(meta)]
    split_df = pd.read_csv(d / "split.csv.gz", dtype={"dicom_id": str})
    return {"dir": d, "meta": meta_df, "split": split_df}


def _ours(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"dicom_id": str, "prior_dicom_id": str, "ViewPosition": str},
                       keep_default_na=False, na_values={"prior_image": [""], "days_between": [""]})


def _assert_same(ours: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert list(ours["dicom_id"]) == list(ref["dicom_id"])
    assert list(ours["image"]) == list(ref["image"])
    want = [p if isinstance(p, str) else None for p in ref["prior_image"]]
    got = [p if isinstance(p, str) else None for p in ours["prior_image"]]
    assert got == want


@pytest.mark.parametrize("split_name", ["all", "train", "test"])
def test_equals_snippet(synth: dict, split_name: str, tmp_path: Path) -> None:
    out = tmp_path / "pairs.csv"
    run_pair_priors(synth["dir"] / "meta.csv.gz", synth["dir"] / "split.csv.gz", out, PairOptions(split_name=split_name))
    ref = snippet_pairs(join_split(synth["meta"], synth["split"], split_name))
    ours = _ours(out)
    _assert_same(ours, ref)
    if split_name == "all":  # the data really is adversarial
        assert ref.duplicated(["subject_id", "StudyDate", "StudyTime"]).sum() > 10
        assert (synth["meta"]["ViewPosition"] == "").sum() > 10


def test_extra_columns_are_consistent(synth: dict, tmp_path: Path) -> None:
    out = tmp_path / "pairs.parquet"
    run_pair_priors(synth["dir"] / "meta.csv.gz", synth["dir"] / "split.csv.gz", out, PairOptions())
    df = pd.read_parquet(out)
    has = df["prior_image"].notna()
    assert has.sum() > 100
    assert (df.loc[has, "prior_StudyDate"] < df.loc[has, "StudyDate"]).all()
    dd = pd.to_datetime(df.loc[has, "StudyDate"].astype(str)) - pd.to_datetime(df.loc[has, "prior_StudyDate"].astype(int).astype(str))
    assert (dd.dt.days.values == df.loc[has, "days_between"].values).all()
    rebuilt = [mimic_image(s, st, d) for s, st, d in
               zip(df.loc[has, "subject_id"], df.loc[has, "prior_study_id"].astype(int), df.loc[has, "prior_dicom_id"], strict=True)]
    assert rebuilt == list(df.loc[has, "prior_image"])
    assert df["days_between"].isna().sum() == (~has).sum()


def _frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["dicom_id", "subject_id", "study_id", "StudyDate", "StudyTime", "ViewPosition"])


def _run_frame(df: pd.DataFrame, tmp_path: Path, opts: PairOptions | None = None) -> pd.DataFrame:
    p = tmp_path / "m.csv"
    df.to_csv(p, index=False)
    out = tmp_path / "o.jsonl"
    run_pair_priors(p, None, out, opts or PairOptions())
    return pd.read_json(out, lines=True, dtype={"dicom_id": str, "prior_dicom_id": str})


def test_hand_cases(tmp_path: Path) -> None:
    df = _frame([
        ("a1", 10000001, 50000001, 21800101, 235959.999, "PA"),  # just before midnight
        ("a2", 10000001, 50000002, 21800102, 0.0, "PA"),  # just after: a new date -> prior a1
        ("a3", 10000001, 50000003, 21800102, 100.0, "LATERAL"),  # same day: shares a2's prior
        ("a4", 10000001, 50000003, 21800102, 100.0, "AP"),  # exact tie with a3: input order kept
        ("a5", 10000001, 50000004, 21800105, float("nan"), ""),  # missing time sorts last; prior = a4
        ("a6", 10000001, 50000005, 21800105, 5.0, "PA"),
        ("b1", 10000002, 50000006, 21800101, 5.0, "PA"),  # another subject: no prior
    ])
    out = _run_frame(df, tmp_path)
    assert list(out["dicom_id"]) == ["a1", "a2", "a3", "a4", "a6", "a5", "b1"]
    prior = [None if not isinstance(p, str) else p for p in out["prior_dicom_id"]]
    assert prior == [None, "a1", "a1", "a1", "a4", "a4", None]
    ref = snippet_pairs(join_split(df, None))
    _assert_same(out.assign(prior_image=out["prior_image"].where(out["prior_image"].notna(), None)), ref)
    assert list(out["days_between"].fillna(-1).astype(int)) == [-1, 1, 1, 1, 3, 3, -1]


def test_options(synth: dict, tmp_path: Path) -> None:
    # a 100-subject slice keeps the (quadratic) snippet quick
    subjects = sorted(set(synth["meta"]["subject_id"]))[:100]
    meta = synth["meta"][synth["meta"]["subject_id"].isin(subjects)]
    split = synth["split"]
    d = tmp_path
    meta.to_csv(d / "meta.csv.gz", index=False)
    split.to_csv(d / "split.csv.gz", index=False)
    # --views: filter first, then the snippet
    out = tmp_path / "v.csv"
    run_pair_priors(d / "meta.csv.gz", d / "split.csv.gz", out, PairOptions(views=parse_views("PA,AP,missing")))
    ref = snippet_pairs(join_split(meta[meta["ViewPosition"].isin(["PA", "AP", ""])], split))
    _assert_same(_ours(out), ref)
    # --same-view-class: the snippet run on each class alone, then merged in sorted order
    out = tmp_path / "c.csv"
    run_pair_priors(d / "meta.csv.gz", d / "split.csv.gz", out, PairOptions(same_view_class=True))
    joined = join_split(meta, split)
    joined["cls"] = [view_class(v) for v in joined["ViewPosition"]]
    parts = [snippet_pairs(g.drop(columns="cls")) for _, g in joined.groupby("cls", sort=False)]
    want = {r.dicom_id: r.prior_image for p in parts for r in p.itertuples()}
    ours = _ours(out)
    assert ours["prior_image"].notna().sum() > 20
    for r in ours.itertuples():
        w = want[r.dicom_id]
        assert (r.prior_image if isinstance(r.prior_image, str) else None) == w
    assert list(ours["dicom_id"]) == list(joined.sort_values(["subject_id", "StudyDate", "StudyTime"], kind="stable")["dicom_id"])
    # --max-gap-days: the snippet's prior, dropped when older than N days
    out = tmp_path / "g.csv"
    run_pair_priors(d / "meta.csv.gz", d / "split.csv.gz", out, PairOptions(max_gap_days=30))
    ours = _ours(out)
    base = tmp_path / "b.csv"
    run_pair_priors(d / "meta.csv.gz", d / "split.csv.gz", base, PairOptions())
    b = _ours(base)
    keep = b["days_between"].notna() & (b["days_between"] <= 30)
    assert list(ours["prior_image"].notna()) == list(keep)
    assert (ours["prior_image"][keep] == b["prior_image"][keep]).all()
    assert keep.sum() > 0 and (b["days_between"] > 30).sum() > 0


def test_prior_positions_empty_and_single() -> None:
    order, prior = prior_positions(np.array([], np.int64), np.array([], np.int64), np.array([], float))
    assert len(order) == 0 and len(prior) == 0
    order, prior = prior_positions(np.array([1]), np.array([20000101]), np.array([np.nan]))
    assert list(order) == [0] and list(prior) == [-1]


def test_stable_order_matches_pandas_with_nans_and_big_ids() -> None:
    from libra_cli.data.pairing import _stable_order

    rng = np.random.default_rng(0)
    for big in (False, True):
        n = 3000
        subj = rng.integers(0, 20, n) + (10**12 if big else 10**7)  # big ids take the lexsort path
        date = rng.choice([20000101, 20000102, 20000301], n)
        time = rng.choice([0.0, 1.5, 235959.999, np.nan], n)
        df = pd.DataFrame({"s": subj, "d": date, "t": time})
        want = df.sort_values(["s", "d", "t"]).index.to_numpy()
        assert (_stable_order(subj, date, time) == want).all()


def test_parse_views() -> None:
    assert parse_views(None) is None
    assert parse_views("pa, ap") == {"PA", "AP"}
    assert "AP AXIAL" in parse_views("frontal")
    assert "" in parse_views("PA,missing")
    with pytest.raises(InputError):
        parse_views(" , ")


def test_bad_inputs(tmp_path: Path, synth: dict) -> None:
    d = synth["dir"]
    bad = tmp_path / "bad.csv"
    bad.write_text("dicom_id,subject_id,StudyDate\nx,1,20000101\n")
    with pytest.raises(InputError, match="lacks column"):
        run_pair_priors(bad, None, tmp_path / "o.csv", PairOptions())
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(gzip.compress(b"dicom_id,subject_id\n" * 1000)[:50])
    with pytest.raises(InputError, match="cannot read"):
        run_pair_priors(broken, None, tmp_path / "o.csv", PairOptions())
    notgz = tmp_path / "plain.csv.gz"
    notgz.write_text("not gzip at all")
    with pytest.raises(InputError, match="cannot read"):
        run_pair_priors(notgz, None, tmp_path / "o.csv", PairOptions())
    only_train = tmp_path / "split_train.csv"
    only_train.write_text("dicom_id,split\n" + "".join(f"{x},train\n" for x in synth["meta"]["dicom_id"]))
    with pytest.raises(InputError, match="does not occur in the split file"):
        run_pair_priors(d / "meta.csv.gz", only_train, tmp_path / "o.csv", PairOptions(split_name="validate"))
    with pytest.raises(InputError, match="is not one of"):
        run_pair_priors(d / "meta.csv.gz", d / "split.csv.gz", tmp_path / "o.csv", PairOptions(split_name="valid"))
    with pytest.raises(InputError, match="needs --split"):
        run_pair_priors(d / "meta.csv.gz", None, tmp_path / "o.csv", PairOptions(split_name="train"))
    with pytest.raises(InputError, match="cannot tell the format"):
        run_pair_priors(d / "meta.csv.gz", None, tmp_path / "o.txt", PairOptions())
    with pytest.raises(InputError, match="does not exist"):
        run_pair_priors(tmp_path / "nope.csv", None, tmp_path / "o.csv", PairOptions())
    baddate = tmp_path / "bd.csv"
    baddate.write_text("dicom_id,subject_id,study_id,StudyDate,StudyTime\nx,1,2,20001301,5\n")
    with pytest.raises(InputError, match="not a YYYYMMDD"):
        run_pair_priors(baddate, None, tmp_path / "o.csv", PairOptions())
    badval = tmp_path / "bv.csv"
    badval.write_text("dicom_id,subject_id,study_id,StudyDate,StudyTime\nx,abc,2,20000101,5\n")
    with pytest.raises(InputError, match="cannot read"):
        run_pair_priors(badval, None, tmp_path / "o.csv", PairOptions())


def test_cli_one_line_errors_and_summary(synth: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = synth["dir"]
    with pytest.raises(SystemExit) as exc:
        main(["data", "pair-priors", str(d / "meta.csv.gz"), "--split", str(d / "split.csv.gz"),
              "--split-name", "valid", "--out", str(tmp_path / "o.csv")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    out = tmp_path / "o.jsonl.gz"
    with pytest.raises(SystemExit) as exc:
        main(["data", "pair-priors", str(d / "meta.csv.gz"), "--split", str(d / "split.csv.gz"),
              "--split-name", "train", "--views", "frontal", "--max-gap-days", "365", "--out", str(out)])
    assert exc.value.code == 0
    err = capsys.readouterr().err
    assert "images with a prior" in err
    rows = [json.loads(line) for line in gzip.open(out, "rt")]
    assert rows and all(r["split"] == "train" and r["ViewPosition"] in ("PA", "AP", "AP AXIAL", "PA LLD") for r in rows)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp files


def test_empty_result_and_all_missing_times(tmp_path: Path) -> None:
    df = _frame([
        ("a", 10000001, 50000001, 21800101, float("nan"), "LATERAL"),
        ("b", 10000001, 50000002, 21800102, float("nan"), "LATERAL"),
    ])
    out = _run_frame(df, tmp_path)
    assert list(out["prior_dicom_id"].fillna("-")) == ["-", "a"]
    p = tmp_path / "m.csv"
    empty = tmp_path / "empty.parquet"
    stats = run_pair_priors(p, None, empty, PairOptions(views=parse_views("PA")))
    assert stats.view_rows == 0 and pd.read_parquet(empty).empty
