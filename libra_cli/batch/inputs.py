"""Batch inputs: a questions JSONL, a CSV or a Hugging Face dataset -> :class:`Item` s + :class:`ErrorRecord` s.

Bad rows never stop a run: they become error records with their line number (``<out>.errors.jsonl``).
Image cells become :class:`ImageRef` s whose ``source`` is an image (path, URL, bytes or a lazy
dataset cell that ``libra_cli.images.load_image`` reads) and whose ``key`` identifies it across
samples, so an image shared by several samples is decoded and encoded once.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libra_cli.errors import InputError
from libra_cli.jsonio import iter_records, read_text

# ----------------------------------------------------------------------------- items and errors


@dataclass(frozen=True)
class ImageRef:
    """An image to load: ``key`` identifies it across samples (cache), ``source`` loads it.

    ``source`` is a path/URL string, bytes, a PIL image, a preprocessed float32 ``[3, H, W]`` array,
    or a zero-argument callable returning one of those (lazy dataset cells).
    """

    key: str
    source: Any = field(compare=False, hash=False)


@dataclass
class Item:
    """One sample of the input, in input order (``index``)."""

    index: int
    question_id: Any
    current: ImageRef
    prior: ImageRef | None = None
    query: str | None = None
    context: str | None = None
    reference: str | None = None
    where: str = ""
    selection: dict[str, Any] | None = None  # study-level input: which images were chosen, and why

    @property
    def key(self) -> str:
        return qid_key(self.question_id)


@dataclass
class ErrorRecord:
    """A sample that could not be answered, with the reason (one line of ``<out>.errors.jsonl``)."""

    index: int
    question_id: Any
    stage: str
    reason: str
    where: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"question_id": self.question_id, "stage": self.stage, "reason": self.reason}
        if self.where:
            d["where"] = self.where
        return d


def qid_key(qid: Any) -> str:
    """The identity of a question_id for resume/dedupe (1 and "1" are the same question)."""
    return str(qid)


# ----------------------------------------------------------------------------- readers


def _path_ref(value: str, folder: Path | None) -> ImageRef:
    s = value.strip()
    if s.startswith(("http://", "https://")):
        return ImageRef(s, s)
    p = Path(s).expanduser()
    if not p.is_absolute() and folder is not None:
        p = folder / p
    full = os.path.normpath(os.path.abspath(p))
    return ImageRef("file:" + full, full)


def _image_pair(value: Any, folder: Path | None) -> tuple[ImageRef | None, ImageRef | None]:
    """``"path"`` or ``[current, prior]`` / ``[current]`` -> refs (prior None = dummy prior)."""
    if isinstance(value, str):
        return (_path_ref(value, folder) if value.strip() else None), None
    if isinstance(value, (list, tuple)):
        vals = [v for v in value if isinstance(v, str) and v.strip()]
        if not vals:
            return None, None
        return _path_ref(vals[0], folder), (_path_ref(vals[1], folder) if len(vals) > 1 else None)
    return None, None


def _study_pair(rec: dict[str, Any], folder: Path | None, where: str
                ) -> tuple[ImageRef, ImageRef | None, dict[str, Any]]:
    """``images`` (the study, with views) + ``prior_images`` (earlier studies, with dates) -> current, prior."""
    from libra_cli.data.studies import StudyImage, parse_date, select

    study = [StudyImage.parse(v, where) for v in rec["images"]]
    earlier = [StudyImage.parse(v, where) for v in rec.get("prior_images") or []]
    chosen = select(study, earlier, parse_date(rec.get("study_date"), where))
    prior = _path_ref(str(chosen.prior.path), folder) if chosen.prior is not None else None
    return _path_ref(str(chosen.current.path), folder), prior, chosen.to_dict()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN from pandas-like sources
        return None
    return str(value)


def _check_item(item: Item, seen: dict[str, str], errors: list[ErrorRecord]) -> bool:
    """Input-level checks shared by every reader: image present, prompt not blank, id unique."""
    if item.current is None:
        errors.append(ErrorRecord(item.index, item.question_id, "input", "no current image given", item.where))
        return False
    if item.query is not None and not item.query.strip():
        errors.append(ErrorRecord(item.index, item.question_id, "input", "empty prompt", item.where))
        return False
    k = item.key
    if k in seen:
        errors.append(ErrorRecord(item.index, item.question_id, "input",
                                  f"duplicate question_id (first at {seen[k]})", item.where))
        return False
    seen[k] = item.where or f"item {item.index}"
    return True


def read_questions(path: str | Path, image_folder: str | Path | None = None) -> tuple[list[Item], list[ErrorRecord]]:
    """Questions JSONL or JSON array (``question_id, image, text, reference?``); bad lines become errors."""
    path = Path(path)
    raw = read_text(path, "questions file")
    folder = Path(image_folder).expanduser() if image_folder else path.parent
    items: list[Item] = []
    errors: list[ErrorRecord] = []
    seen: dict[str, str] = {}
    for lineno, rec in iter_records(path, "questions file", text=raw):
        idx = lineno - 1
        where = f"{path.name}:{lineno}"
        if isinstance(rec, Exception):
            errors.append(ErrorRecord(idx, None, "input", f"unreadable JSON line {lineno}: {rec}", where))
            continue
        if not isinstance(rec, dict):
            errors.append(ErrorRecord(idx, None, "input", f"line {lineno} is not a JSON object", where))
            continue
        qid = rec.get("question_id", rec.get("id"))
        if qid is None:
            errors.append(ErrorRecord(idx, None, "input", f"line {lineno} has no question_id", where))
            continue
        selection = None
        if isinstance(rec.get("images"), list):  # study-level: pick the frontal current and the earlier prior
            try:
                cur, prior, selection = _study_pair(rec, folder, where)
            except InputError as exc:
                errors.append(ErrorRecord(idx, qid, "input", str(exc), where))
                continue
        else:
            cur, prior = _image_pair(rec.get("image"), folder)
        item = Item(idx, qid, cur, prior, _text(rec.get("text")), _text(rec.get("context")),
                    _text(rec.get("reference")), where, selection)
        if _check_item(item, seen, errors):
            items.append(item)
    return items, errors


@dataclass
class Columns:
    """Column names for CSV / dataset inputs (MIMIC-CXR-RRG names by default)."""

    image: str = "main_image"
    prior: str | None = "prior_image"
    prompt: str | None = "default_prompt"
    id: str | None = None
    context: str | None = None
    reference: str | None = None

    def resolve_id(self, names: list[str]) -> str | None:
        if self.id:
            return self.id
        for c in ("question_id", "id"):
            if c in names:
                return c
        return None

    def check(self, names: list[str], what: str) -> None:
        needed = [self.image] + [c for c in (self.id, self.context, self.reference) if c]
        missing = [c for c in needed if c not in names]
        if missing:
            raise InputError(f"{what} has no column(s) {', '.join(missing)} (has: {', '.join(names[:15])}); "
                             "name them with --image-column/--id-column/--context-column/--reference-column")


def _rows_to_items(rows: Iterable[tuple[int, str, dict[str, Any]]], cols: Columns, names: list[str],
                   folder: Path | None, image_cell: Callable[[Any, int, str], ImageRef | None]
                   ) -> tuple[list[Item], list[ErrorRecord]]:
    id_col = cols.resolve_id(names)
    prior_col = cols.prior if cols.prior in names else None
    prompt_col = cols.prompt if cols.prompt in names else None
    items: list[Item] = []
    errors: list[ErrorRecord] = []
    seen: dict[str, str] = {}
    for idx, where, row in rows:
        qid = row.get(id_col) if id_col else idx
        if qid is None or (isinstance(qid, str) and not qid.strip()):
            errors.append(ErrorRecord(idx, None, "input", f"empty {id_col}", where))
            continue
        cur_val = row.get(cols.image)
        prior_ref = None
        if isinstance(cur_val, (list, tuple)) and cur_val and all(isinstance(v, str) for v in cur_val):
            cur_ref, prior_ref = _image_pair(list(cur_val), folder)
        else:
            cur_ref = image_cell(cur_val, idx, cols.image)
        if prior_col:
            prior_ref = image_cell(row.get(prior_col), idx, prior_col) or prior_ref
        item = Item(idx, qid, cur_ref, prior_ref, _text(row.get(prompt_col)) if prompt_col else None,
                    _text(row.get(cols.context)) if cols.context else None,
                    _text(row.get(cols.reference)) if cols.reference else None, where)
        if _check_item(item, seen, errors):
            items.append(item)
    return items, errors


def read_csv(path: str | Path, cols: Columns, image_folder: str | Path | None = None) -> tuple[list[Item], list[ErrorRecord]]:
    """A CSV with the dataset's columns; image cells are paths (relative to --image-folder or the CSV)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"CSV '{path}' does not exist; check the path")
    folder = Path(image_folder).expanduser() if image_folder else path.parent
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        names = list(reader.fieldnames or [])
        cols.check(names, f"CSV '{path}'")
        rows = []
        for i, row in enumerate(reader):
            rows.append((i, f"{path.name}:{reader.line_num}", {k: (v if v != "" else None) for k, v in row.items()}))

    def cell(v: Any, idx: int, col: str) -> ImageRef | None:
        return _path_ref(v, folder) if isinstance(v, str) and v.strip() else None

    return _rows_to_items(rows, cols, names, folder, cell)


def open_dataset(source: str, config: str | None = None, split: str | None = None) -> Any:
    """A ``datasets.Dataset`` from a hub name, a ``save_to_disk`` folder, a data folder or a parquet file.

    ``split=None``: ``test`` when there is one, else the only split. A split that is not there is an
    error, never a silent fallback to other rows.
    """
    import datasets

    p = Path(source).expanduser()
    try:
        if p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(p))
        elif p.is_file() and p.suffix.lower() == ".parquet":
            ds = datasets.load_dataset("parquet", data_files=str(p), split="train")
        elif p.is_file():
            raise InputError(f"cannot read '{source}' as a dataset; give a .parquet file, a dataset folder or a hub name")
        else:
            if not p.exists() and (source.startswith((".", "/", "~")) or "/" not in source):
                raise InputError(f"dataset '{source}' is neither a folder nor a hub name (owner/name); check the path")
            ds = datasets.load_dataset(str(p) if p.exists() else source, config, split=split)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many types (offline, missing config, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot open dataset '{source}': {first}") from exc
    return _choose_split(ds, split, source, one_table=p.is_file())


def _choose_split(ds: Any, split: str | None, source: str, one_table: bool) -> Any:
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        names = ", ".join(ds)
        if split is not None:
            if split not in ds:
                raise InputError(f"dataset '{source}' has no split {split!r} (it has: {names}); choose one with --split")
            return ds[split]
        if "test" in ds:
            return ds["test"]
        if len(ds) == 1:
            return next(iter(ds.values()))
        raise InputError(f"dataset '{source}' has splits {names}; choose one with --split")
    if split is not None and one_table:
        raise InputError(f"'{source}' is a single table without splits; drop --split (or filter the file first)")
    saved = str(getattr(ds, "split", None) or "")
    if split is not None and saved and saved != split:
        raise InputError(f"dataset '{source}' holds only the {saved} split, not {split!r}; drop --split or give "
                         "the folder that holds that split")
    return ds


def read_dataset(ds: Any, cols: Columns, image_folder: str | Path | None = None, name: str = "dataset"
                 ) -> tuple[list[Item], list[ErrorRecord]]:
    """Items from a ``datasets.Dataset``. Image cells (``Image`` features) are read lazily by the workers."""
    import datasets

    names = list(ds.column_names)
    cols.check(names, f"dataset '{name}'")
    if getattr(ds, "_indices", None) is not None:
        ds = ds.flatten_indices()
    folder = Path(image_folder).expanduser() if image_folder else None
    image_cols = [c for c in (cols.image, cols.prior) if c and c in names]
    feats = ds.features
    table = ds.data.table
    lazy_cols = {c for c in image_cols if isinstance(feats[c], datasets.Image)}
    text_cols = [c for c in names if c not in lazy_cols and c in
                 {cols.image, cols.prior, cols.prompt, cols.resolve_id(names), cols.context, cols.reference}]
    data = {c: table.column(c).to_pylist() for c in text_cols}
    paths = {c: table.column(c).combine_chunks().field("path").to_pylist() for c in lazy_cols}
    has_bytes = {c: table.column(c).combine_chunks().field("bytes").is_valid().to_pylist() for c in lazy_cols}

    def lazy(col: str, row: int) -> Callable[[], Any]:
        def fetch() -> Any:
            cell = table.column(col)[row].as_py()
            return cell.get("bytes") or cell.get("path")
        return fetch

    def cell(v: Any, idx: int, col: str) -> ImageRef | None:
        if col in lazy_cols:
            p, b = paths[col][idx], has_bytes[col][idx]
            if not b and not p:
                return None
            if b:  # embedded bytes: same path in two rows = same image
                return ImageRef(f"ds:{p}" if p else f"ds:{col}:{idx}", lazy(col, idx))
            return _path_ref(p, folder)
        if isinstance(v, str) and v.strip():
            return _path_ref(v, folder)
        if isinstance(v, dict) and (v.get("bytes") or v.get("path")):
            return ImageRef(f"ds:{col}:{idx}", v.get("bytes") or v.get("path"))
        return None

    n = len(ds)
    rows = ((i, f"{name}[{i}]", {c: data[c][i] for c in text_cols} | {c: None for c in lazy_cols}) for i in range(n))
    return _rows_to_items(rows, cols, names, folder, cell)


def read_input(source: str | None, *, dataset: str | None = None, config: str | None = None, split: str | None = None,
               image_folder: str | None = None, cols: Columns | None = None) -> tuple[list[Item], list[ErrorRecord]]:
    """Dispatch on the input kind: ``--dataset`` / folder / .parquet -> dataset, .csv -> CSV, else questions JSONL."""
    cols = cols or Columns()
    if dataset and source:
        raise InputError("give either INPUT or --dataset, not both")
    if dataset:
        return read_dataset(open_dataset(dataset, config, split), cols, image_folder, dataset)
    if not source:
        raise InputError("no input; give a questions JSONL / CSV / parquet / dataset folder, or --dataset NAME")
    p = Path(source).expanduser()
    low = p.name.lower()
    if p.is_dir() or low.endswith(".parquet"):
        return read_dataset(open_dataset(str(p), config, split), cols, image_folder, p.name)
    if low.endswith(".csv"):
        return read_csv(p, cols, image_folder)
    if not p.exists():
        raise InputError(f"input '{source}' does not exist; check the path (or use --dataset for a hub dataset)")
    return read_questions(p, image_folder)

