"""Study-level input: the frontal current and the latest earlier frontal prior, by pair-priors' rules, recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from libra_cli.data.studies import StudyImage, select


def test_frontal_current_and_latest_earlier_frontal_prior() -> None:
    study = [StudyImage("lat.jpg", "LATERAL", 21800105, 1000), StudyImage("ap.jpg", "AP", 21800105, 1001),
             StudyImage("pa.jpg", "PA", 21800105, 900)]
    earlier = [StudyImage("old-pa.jpg", "PA", 21791201, 800), StudyImage("recent-lat.jpg", "LL", 21800101, 800),
               StudyImage("recent-ap-1.jpg", "AP", 21800101, 700), StudyImage("recent-ap-2.jpg", "AP", 21800101, None),
               StudyImage("same-day.jpg", "PA", 21800105, 100)]
    s = select(study, earlier)
    assert s.current.path == "pa.jpg"  # PA before AP, whatever the time
    assert s.prior.path == "recent-ap-2.jpg"  # latest earlier date; missing time sorts last (pair-priors)
    d = s.to_dict()
    assert d["current_view"] == "PA" and d["prior_date"] == 21800101 and d["study_images"] == 3 and "rule" in d


def test_equals_pair_priors_same_view_class_on_random_subjects() -> None:
    """For every frontal image, select() picks the prior pair-priors --same-view-class picks."""
    from libra_cli.data.pairing import prior_positions, view_class

    rng = np.random.default_rng(0)
    views = ["PA", "AP", "LATERAL", "LL", ""]
    for _ in range(30):
        n = int(rng.integers(2, 12))
        date = rng.integers(21800101, 21800110, n)
        time = rng.choice([np.nan, 100.0, 200.0, 300.0], n)
        view = rng.choice(views, n)
        group = np.array([{"frontal": 0, "lateral": 1}.get(view_class(v), 2) for v in view], dtype=np.int8)
        _, prior = prior_positions(np.zeros(n, dtype=np.int64), date, time, group)
        ims = [StudyImage(str(i), str(view[i]), int(date[i]), None if np.isnan(time[i]) else float(time[i]))
               for i in range(n)]
        for i in range(n):
            if view_class(view[i]) != "frontal":
                continue
            got = select([ims[i]], [im for j, im in enumerate(ims) if j != i])
            want = None if prior[i] < 0 else str(prior[i])
            assert (got.prior.path if got.prior else None) == want


def test_no_frontal_and_no_prior_are_said() -> None:
    s = select([StudyImage("lat.jpg", "LATERAL")], [StudyImage("old-lat.jpg", "LATERAL", 21790101)])
    assert s.current.path == "lat.jpg" and s.prior is None
    assert "no frontal image" in s.note and "reused as the prior" in s.note


def test_batch_study_level_input_records_the_choice(tmp_path: Path) -> None:
    from libra_cli import batch as b

    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question_id": "s1", "study_date": "2180-01-05",
                             "images": [{"path": "lat.jpg", "view": "LATERAL"}, {"path": "pa.jpg", "view": "PA"}],
                             "prior_images": [{"path": "p1.jpg", "view": "AP", "date": "2179-12-01"},
                                              {"path": "p2.jpg", "view": "AP", "date": "2180-01-01"},
                                              {"path": "p3.jpg", "view": "LATERAL", "date": "2180-01-02"}]}) + "\n"
                 + json.dumps({"question_id": "s2", "images": [{"path": "x.jpg", "view": "PA", "date": "bad"}]}) + "\n")
    items, errors = b.read_input(str(q))
    assert [it.key for it in items] == ["s1"]
    it = items[0]
    assert it.current.source == str(tmp_path / "pa.jpg") and it.prior.source == str(tmp_path / "p2.jpg")
    assert it.selection["prior_view"] == "AP" and it.selection["earlier_images"] == 3
    assert errors[0].question_id == "s2" and "date 'bad'" in errors[0].reason


def test_data_build_per_study(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from libra_cli.data.build import BuildOptions, build_records

    pairs = pa.table({
        "dicom_id": ["a", "b", "c", "d"], "subject_id": [1, 1, 1, 1], "study_id": [10, 10, 20, 20],
        "image": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "ViewPosition": ["LATERAL", "AP", "PA", "LL"],
        "StudyTime": [1.0, 2.0, 3.0, 4.0], "prior_image": [None, None, "b.jpg", "a.jpg"],
        "prior_StudyDate": [None, None, 21800101, 21800101]})
    pq.write_table(pairs, tmp_path / "p.parquet")
    sections = {"s10": {"findings": "Old."}, "s20": {"findings": "New."}}
    records, stats = build_records(pairs, sections, BuildOptions(per_study=True))
    assert [(r["id"], r["images"]) for r in records] == [("b", ["b.jpg"]), ("c", ["c.jpg", "b.jpg"])]
    assert records[1]["selection"]["current_view"] == "PA" and records[1]["selection"]["study_images"] == 2
    assert stats.kept == 2 and stats.with_prior == 1
    per_image, _ = build_records(pairs, sections, BuildOptions())
    assert len(per_image) == 4 and "selection" not in per_image[0]


@pytest.mark.parametrize("bad", [{"images": []}, {"images": [{"view": "PA"}]}])
def test_bad_study_records_are_errors(tmp_path: Path, bad: dict) -> None:
    from libra_cli import batch as b

    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question_id": 1, **bad}) + "\n")
    items, errors = b.read_input(str(q))
    assert not items and errors and errors[0].stage == "input"
