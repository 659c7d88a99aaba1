"""Reading references and predictions: JSONL / JSON / CSV, matched by ``question_id``.

Errors are :class:`InputError` lines that name the file, the line and what to do.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libra_cli.errors import InputError

# the original's order for the reference text; a prediction file's text is normally ``text``
# (``report``: ReXrank's test-set JSON; ``model_prediction``: a ReXrank submission)
REFERENCE_KEYS: tuple[str, ...] = ("reference", "findings", "impression", "report", "text")
PREDICTION_KEYS: tuple[str, ...] = ("prediction", "model_prediction", "text", "answer", "findings", "impression")
# in one file holding both, the reference must come from a field other than the prediction's;
# ``libra batch`` output keeps it in ``metadata.reference``
COMBINED_REFERENCE_KEYS: tuple[str, ...] = ("reference", "findings", "impression", "report")
COMBINED_PREDICTION_KEYS: tuple[str, ...] = ("prediction", "model_prediction", "text", "answer")
REXRANK_SECTIONS = ("section_findings", "section_impression")
ID_KEYS: tuple[str, ...] = ("question_id", "id", "study_id")


@dataclass
class Pairs:
    """Aligned evaluation pairs (raw text, before cleaning), in the reference file's order."""

    ids: list[str]
    references: list[str]
    predictions: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def _first_few(items: Iterable[Any], k: int = 5) -> str:
    items = list(items)
    head = ", ".join(repr(x) for x in items[:k])
    return head + (", ..." if len(items) > k else "")


def read_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for a ``.jsonl``, ``.json`` (list) or ``.csv`` file."""
    if not path.exists():
        raise InputError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a JSONL, JSON or CSV file")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
    if not text.strip():
        raise InputError(f"{path} is empty; it needs one record per line with a question_id and a text")
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))  # keeps newlines inside quoted fields
        rows = []
        try:
            for row in reader:
                rows.append((reader.line_num, dict(row)))
        except csv.Error as exc:
            raise InputError(f"{path}:{reader.line_num}: malformed CSV ({exc}); fix the file") from exc
        if not rows:
            raise InputError(f"{path} has a header but no rows")
        return rows
    if suffix == ".json" and text.lstrip().startswith("{"):
        return _json_object_records(path, text)
    from libra_cli.jsonio import iter_records

    records = []
    for lineno, rec in iter_records(path, text=text):
        if isinstance(rec, ValueError):
            raise InputError(f"{path}:{lineno}: malformed JSON ({rec}); each line must be one JSON object")
        if not isinstance(rec, dict):
            raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        records.append((lineno, rec))
    if not records:
        raise InputError(f"{path} holds no records; it needs one JSON object per line")
    return records


def _json_object_records(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    """A JSON object keyed by study id (ReXrank): ``{id: report}`` or ``{id: {fields}}``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}); fix the file") from exc
    out = []
    for i, (key, value) in enumerate(data.items()):
        if isinstance(value, dict):
            out.append((i + 1, {"question_id": key, **value}))
        elif isinstance(value, str) or value is None:
            out.append((i + 1, {"question_id": key, "text": value or ""}))
        else:
            raise InputError(f"{path}: the value of {key!r} is neither a report string nor an object; "
                             "expected {study_id: report} or ReXrank's {study_id: {model_prediction, ...}}")
    if not out:
        raise InputError(f"{path} is an empty JSON object; it needs study ids mapped to reports")
    return out


def _rexrank_reference(rec: dict[str, Any]) -> str | None:
    """ReXrank's ground truth: ``f"Findings: {findings} Impression: {impression}"`` (missing -> None)."""
    if not any(k in rec for k in REXRANK_SECTIONS):
        return None
    parts = []
    for key in REXRANK_SECTIONS:
        value = rec.get(key)
        if isinstance(value, float) and value != value:  # NaN, as pandas reads a missing section
            value = None
        parts.append(value)
    return f"Findings: {parts[0]} Impression: {parts[1]}"


def _reference_of(rec: dict[str, Any], keys: Sequence[str], path: Path, lineno: int) -> str:
    """The reference text: the usual fields, ReXrank's sections, or ``libra batch``'s metadata.reference."""
    if "model_prediction" in rec:  # a ReXrank submission: the ground truth is built from its sections
        rex = _rexrank_reference(rec)
        if rex is not None:
            return rex
    for key in keys:
        if key in rec and rec[key] is not None:
            return _pick(rec, keys, path, lineno, "reference")
    rex = _rexrank_reference(rec)
    if rex is not None:
        return rex
    meta = rec.get("metadata")
    if isinstance(meta, dict) and meta.get("reference") is not None:
        return str(meta["reference"])
    raise InputError(f"{path}:{lineno}: no reference text (looked for {', '.join(keys)}, ReXrank's section_findings/"
                     "section_impression and libra batch's metadata.reference); add one of these fields")


def _pick(rec: dict[str, Any], keys: Sequence[str], path: Path, lineno: int, what: str) -> str:
    for key in keys:
        if key in rec and rec[key] is not None:
            value = rec[key]
            if isinstance(value, list):  # e.g. several generated texts: take the first
                value = value[0] if value else ""
            return str(value)
    raise InputError(f"{path}:{lineno}: no {what} text (looked for {', '.join(keys)}); add one of these fields")


def _id_of(rec: dict[str, Any], path: Path, lineno: int) -> str:
    for key in ID_KEYS:
        if key in rec and rec[key] is not None:
            return str(rec[key])
    raise InputError(f"{path}:{lineno}: no question_id; every record needs one to match references and predictions")


def _index(path: Path, keys: Sequence[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    dups: list[str] = []
    for lineno, rec in read_records(path):
        qid = _id_of(rec, path, lineno)
        if qid in out:
            dups.append(qid)
        if what == "reference":
            out[qid] = _reference_of(rec, keys, path, lineno)
        else:
            out[qid] = _pick(rec, keys, path, lineno, what)
    if dups:
        raise InputError(
            f"{path}: {len(dups)} duplicate question_id(s) ({_first_few(dups)}); each id must appear once"
        )
    return out


def load_pairs(references: Path, predictions: Path | None = None, allow_missing: bool = False) -> Pairs:
    """Match references and predictions by id (reference order); one file holding both when ``predictions`` is None.

    ``allow_missing`` evaluates only the ids present on both sides instead of failing.
    """
    if predictions is None:
        refs: dict[str, str] = {}
        preds: dict[str, str] = {}
        seen: set[str] = set()
        dups: list[str] = []
        for lineno, rec in read_records(references):
            qid = _id_of(rec, references, lineno)
            if qid in seen:
                dups.append(qid)
            seen.add(qid)
            refs[qid] = _reference_of(rec, COMBINED_REFERENCE_KEYS, references, lineno)
            preds[qid] = _pick(rec, COMBINED_PREDICTION_KEYS, references, lineno, "prediction")
        if dups:
            raise InputError(f"{references}: {len(dups)} duplicate question_id(s) ({_first_few(dups)}); each id must appear once")
        ids = list(refs)
        return Pairs(ids, [refs[i] for i in ids], [preds[i] for i in ids])
    refs = _index(references, REFERENCE_KEYS, "reference")
    preds = _index(predictions, PREDICTION_KEYS, "prediction")
    missing_pred = [i for i in refs if i not in preds]
    missing_ref = [i for i in preds if i not in refs]
    if (missing_pred or missing_ref) and not allow_missing:
        parts = []
        if missing_pred:
            parts.append(f"{len(missing_pred)} reference id(s) have no prediction ({_first_few(missing_pred)})")
        if missing_ref:
            parts.append(f"{len(missing_ref)} prediction id(s) have no reference ({_first_few(missing_ref)})")
        raise InputError(
            f"{references.name} and {predictions.name} do not match: " + "; ".join(parts)
            + "; pass matching files, or --allow-missing to score only the shared ids"
        )
    ids = [i for i in refs if i in preds]
    if not ids:
        raise InputError(f"{references.name} and {predictions.name} share no question_id; check that they belong together")
    return Pairs(ids, [refs[i] for i in ids], [preds[i] for i in ids])


def append_results_csv(path: Path, model_name: str, scores: dict[str, float]) -> None:
    """Append one row like the original ``append_results_to_csv`` (header written only for a new file).

    An existing file keeps its own column order; metrics it has no column for are refused rather than dropped.
    The file is rewritten atomically, so a full disk never leaves a torn row.
    """
    from libra_cli.atomic import atomic_path

    row = {"Model Name": model_name, **scores}
    old = path.read_text(encoding="utf-8") if path.exists() and path.stat().st_size > 0 else ""
    header = next(csv.reader(io.StringIO(old)), []) if old else list(row)
    extra = [k for k in row if k not in header]
    if extra:
        raise InputError(f"{path} has no column(s) {', '.join(extra)}; write to a new CSV or choose matching --metrics")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header)
    if not old:
        writer.writeheader()
    elif not old.endswith("\n"):
        buf.write("\n")
    writer.writerow(row)
    with atomic_path(path) as tmp:
        tmp.write_text(old + buf.getvalue(), encoding="utf-8", newline="")


def align_for_compare(a: Pairs, b: Pairs, name_a: str, name_b: str, allow_missing: bool) -> tuple[Pairs, Pairs]:
    """Two prediction files on the same references, restricted to their shared ids (reference order)."""
    if a.ids == b.ids:
        return a, b
    shared = set(a.ids) & set(b.ids)
    if not allow_missing:
        raise InputError(
            f"{name_a} and {name_b} cover different ids ({len(a.ids)} vs {len(b.ids)}, "
            f"{len(shared)} shared); pass --allow-missing to compare on the shared ids"
        )
    keep = [i for i in a.ids if i in shared]
    a_pred, b_pred = dict(zip(a.ids, a.predictions, strict=True)), dict(zip(b.ids, b.predictions, strict=True))
    refs = dict(zip(a.ids, a.references, strict=True))
    return (Pairs(keep, [refs[i] for i in keep], [a_pred[i] for i in keep]),
            Pairs(keep, [refs[i] for i in keep], [b_pred[i] for i in keep]))


def write_per_sample(path: Path, rows: list[dict[str, Any]]) -> None:
    """Per-pair scores as JSONL, written atomically (a rerun never leaves half a file)."""
    from libra_cli.atomic import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
