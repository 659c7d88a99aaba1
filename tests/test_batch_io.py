"""``libra batch`` inputs and output files, without a model: readers, writer, merge."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from libra_cli import batch as b


def test_questions_jsonl_reader(tmp_path: Path) -> None:
    q = tmp_path / "q.jsonl"
    q.write_text(
        '{"question_id": 7, "image": ["c.jpg", "p.jpg"], "text": "Q", "reference": "R"}\n'
        "\n"
        '{"question_id": 8, "image": "c.jpg", "text": "Q2"}\n'
        "[1, 2]\n"
        '{"image": "c.jpg"}\n'
        '{"question_id": "7", "image": "x.jpg"}\n'
        '{"question_id": 9, "image": [], "text": "Q"}\n'
    )
    items, errors = b.read_input(str(q), image_folder=str(tmp_path / "imgs"))
    assert [i.question_id for i in items] == [7, 8]
    assert items[0].current.source == str(tmp_path / "imgs" / "c.jpg") and items[0].prior.key.endswith("p.jpg")
    assert items[0].reference == "R" and items[1].prior is None
    assert items[0].current.key == items[1].current.key  # same file -> same cache key
    assert [(e.where, e.reason.split(" (")[0]) for e in errors] == [
        ("q.jsonl:4", "line 4 is not a JSON object"), ("q.jsonl:5", "line 5 has no question_id"),
        ("q.jsonl:6", "duplicate question_id"), ("q.jsonl:7", "no current image given")]


def test_csv_and_dataset_readers(tmp_path: Path) -> None:
    import datasets

    rows = {"id": ["s1", "s2", "s3"], "main_image": ["a.jpg", "b.jpg", "c.jpg"], "prior_image": ["p.jpg", "", None],
            "default_prompt": ["Describe.", None, "Q"], "indication": ["cough", None, "fever"],
            "findings": ["f1", "f2", "f3"]}
    csv_path = tmp_path / "t.csv"
    import csv

    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(rows))
        for i in range(3):
            w.writerow(["" if rows[c][i] is None else rows[c][i] for c in rows])
    cols = b.Columns(context="indication", reference="findings")
    items, errors = b.read_input(str(csv_path), cols=cols)
    assert not errors
    assert [(i.question_id, i.prior is not None, i.query, i.context, i.reference) for i in items] == [
        ("s1", True, "Describe.", "cough", "f1"), ("s2", False, None, None, "f2"), ("s3", False, "Q", "fever", "f3")]

    ds = datasets.Dataset.from_dict(rows)
    ds.save_to_disk(str(tmp_path / "ds"))
    ds.to_parquet(str(tmp_path / "t.parquet"))
    for src in (str(tmp_path / "ds"), str(tmp_path / "t.parquet")):
        d_items, d_err = b.read_input(src, cols=cols, image_folder=str(tmp_path))
        assert not d_err
        assert [(i.question_id, i.current.key, i.prior is not None, i.query) for i in d_items] == [
            (i.question_id, i.current.key, i.prior is not None, i.query) for i in items]
    # Image features: bytes stay in the arrow file until a worker needs them; the row number is the id
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (9, 7), 128).save(img)
    feat = datasets.Features({"main_image": datasets.Image(), "prior_image": datasets.Image()})
    ds2 = datasets.Dataset.from_dict({"main_image": [str(img)] * 2, "prior_image": [None, str(img)]}, features=feat)
    ds2 = ds2.cast(datasets.Features({"main_image": datasets.Image(), "prior_image": datasets.Image()}))
    ds2.save_to_disk(str(tmp_path / "ds2"))
    i2, e2 = b.read_input(None, dataset=str(tmp_path / "ds2"))
    assert not e2 and [i.question_id for i in i2] == [0, 1] and i2[0].prior is None
    src = i2[1].prior.source
    data = src() if callable(src) else src
    assert (data if isinstance(data, bytes) else Path(data).read_bytes())[:4] == b"\x89PNG"
    with pytest.raises(b.InputError, match="no column"):
        b.read_input(str(csv_path), cols=b.Columns(image="nope"))
    with pytest.raises(b.InputError, match="does not exist"):
        b.read_input(str(tmp_path / "missing.jsonl"))


def test_writer_appends_whole_lines_without_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "a.jsonl"
    w = b.AnswerWriter(out)
    w.append([{"question_id": 1, "text": "a"}, {"question_id": 2, "text": "b"}])
    w.append([{"question_id": 2, "text": "again"}])
    w.close()
    with open(out, "ab") as fh:
        fh.write(b'{"question_id": 3, "te')
    w = b.AnswerWriter(out)
    assert set(w.done) == {"1", "2"}
    assert out.read_bytes().endswith(b"\n")
    w.append([{"question_id": "3", "text": "c"}])
    w.close()
    assert [json.loads(x)["question_id"] for x in out.read_text().splitlines()] == [1, 2, "3"]


def test_sharding_and_ids(tmp_path: Path) -> None:
    items = [b.Item(i, i, b.ImageRef(f"k{i}", f"{i}.jpg")) for i in range(7)]
    parts = [b.shard_items(items, [], 3, k)[0] for k in range(3)]
    assert sorted(i.index for p in parts for i in p) == list(range(7))
    assert b.shard_path(Path("/x/answers.jsonl"), 4, 1).name == "answers.shard-01-of-04.jsonl"
    with pytest.raises(b.InputError):
        b.shard_items(items, [], 2, 2)
    a = b.answer_id("m", 1, {"t": 0})
    assert a == b.answer_id("m", "1", {"t": 0}) != b.answer_id("m", 2, {"t": 0}) and len(a) == 22
    os.environ.pop("WORLD_SIZE", None)
    assert b.shard_from_env() == (1, 0)


def test_a_second_writer_on_the_same_output_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "a.jsonl"
    first = b.AnswerWriter(out)
    with pytest.raises(b.InputError, match="another libra batch is writing"):
        b.AnswerWriter(out)
    first.close()
    b.AnswerWriter(out).close()  # free again once the first run is done
