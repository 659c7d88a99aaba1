"""Where CCD's label probabilities come from: a ``--ccd-labels`` file, or an expert classifier.

One interface (:func:`labels_for`): a list of studies in, one ``{label: probability}`` per study
out, in the order the source gives them (that order is the order of the guidance sentence).
A label file lets users bring any classifier and lets tests run without expert weights.

File formats (key order is kept; ``"Frontal"`` / ``"Lateral"`` keys are the view):

- JSON object of numbers: one study (``libra infer``), or the same labels for every study;
- JSON object of objects: ``{question_id: {label: p, ...}, ...}``;
- JSON array or JSONL of records: ``{"question_id" (or "id"): ..., "labels": {...}}`` or the labels
  as the record's other keys;
- CSV: a ``question_id`` (or ``id``) column and one column per label (an empty cell: label absent);
  without an id column, exactly one row (one study).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from libra_cli.ccd.experts import get_expert, study_image
from libra_cli.ccd.labels import Labels
from libra_cli.errors import InputError
from libra_cli.jsonio import iter_records
from libra_cli.requests import CCDSettings, Sample

ID_KEYS = ("question_id", "id")
_cache: dict[tuple[str, int, int], LabelFile] = {}


class LabelFile:
    """Per-study label probabilities read from a file (see the module docstring for the formats)."""

    def __init__(self, path: str, single: Labels | None, by_id: dict[str, Labels]) -> None:
        self.path = path
        self.single = single
        self.by_id = by_id

    @classmethod
    def read(cls, path: str | Path) -> LabelFile:
        """Parse ``path`` once per (path, size, mtime)."""
        p = Path(path).expanduser()
        if not p.is_file():
            raise InputError(f"--ccd-labels file '{p}' does not exist; check the path")
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _cache:
            text = p.read_text(encoding="utf-8-sig")
            single, by_id = _parse_csv(text, p) if p.suffix.lower() in (".csv", ".tsv") else _parse_json(text, p)
            _cache[key] = cls(str(p), single, by_id)
        return _cache[key]

    def for_sample(self, sample: Any) -> Labels:
        if self.single is not None:
            return self.single
        sid = getattr(sample, "id", None)
        if sid is None:
            if len(self.by_id) == 1:
                return next(iter(self.by_id.values()))
            raise InputError(f"--ccd-labels {self.path} holds {len(self.by_id)} studies by question_id, but this "
                             "study has no id; give a file with one study's labels")
        labels = self.by_id.get(str(sid))
        if labels is None:
            raise InputError(f"--ccd-labels {self.path} has no labels for question_id {sid!r}; add them to the file")
        return labels


def _labels(obj: dict[str, Any], where: str) -> Labels:
    out: Labels = {}
    for k, v in obj.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
            raise InputError(f"{where}: label {k!r} has {v!r}; label values must be probabilities in [0, 1]")
        out[str(k)] = float(v)
    return out


def _record(rec: Any, where: str) -> tuple[str, Labels]:
    if not isinstance(rec, dict):
        raise InputError(f"{where}: expected an object with question_id and labels, got {type(rec).__name__}")
    qid = next((rec[k] for k in ID_KEYS if k in rec), None)
    if qid is None:
        raise InputError(f"{where}: record has no question_id (or id)")
    rest = rec["labels"] if isinstance(rec.get("labels"), dict) else {k: v for k, v in rec.items() if k not in ID_KEYS}
    return str(qid), _labels(rest, where)


def _parse_json(text: str, path: Path) -> tuple[Labels | None, dict[str, Labels]]:
    data: Any = None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if sum(1 for line in text.splitlines() if line.strip()) < 2:  # not JSON Lines either
                raise InputError(f"--ccd-labels {path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix it") from exc
    if isinstance(data, dict):
        if data and all(isinstance(v, dict) for v in data.values()):
            return None, {str(k): _labels(v, f"{path} [{k}]") for k, v in data.items()}
        if isinstance(data.get("labels"), dict) or any(k in data for k in ID_KEYS):
            qid, labels = _record(data, str(path))
            return None, {qid: labels}
        return _labels(data, str(path)), {}
    by_id: dict[str, Labels] = {}
    for lineno, rec in iter_records(path, "--ccd-labels file", text=text):
        where = f"{path} line {lineno}"
        if isinstance(rec, ValueError):
            raise InputError(f"{where} is not valid JSON ({rec}); fix the file")
        qid, labels = _record(rec, where)
        by_id[qid] = labels
    if not by_id:
        raise InputError(f"--ccd-labels {path} holds no labels")
    return None, by_id


def _parse_csv(text: str, path: Path) -> tuple[Labels | None, dict[str, Labels]]:
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    rows = list(csv.reader(io.StringIO(text), dialect=dialect))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise InputError(f"--ccd-labels {path} needs a header row and at least one row of probabilities")
    header = [h.strip() for h in rows[0]]
    id_col = next((header.index(k) for k in ID_KEYS if k in header), None)
    by_id: dict[str, Labels] = {}
    parsed: list[Labels] = []
    for n, row in enumerate(rows[1:], start=2):
        where = f"{path} row {n}"
        cells: dict[str, Any] = {}
        for i, name in enumerate(header):
            if i == id_col or i >= len(row) or not row[i].strip():
                continue
            try:
                cells[name] = float(row[i])
            except ValueError as exc:
                raise InputError(f"{where}: {name} = {row[i]!r} is not a number") from exc
        labels = _labels(cells, where)
        if id_col is not None:
            by_id[row[id_col].strip()] = labels
        parsed.append(labels)
    if id_col is None:
        if len(parsed) != 1:
            raise InputError(f"--ccd-labels {path} has {len(parsed)} rows but no question_id column; add one")
        return parsed[0], {}
    return None, by_id


def labels_for(samples: list[Sample], ccd: CCDSettings, device: str | None = None) -> list[Labels]:
    """The label probabilities of every study: from ``ccd.labels``, else the expert (one batched run)."""
    if ccd.labels:
        f = LabelFile.read(ccd.labels)
        return [f.for_sample(s) for s in samples]
    expert = get_expert(ccd.expert, device)
    return expert.predict([study_image(s) for s in samples])
