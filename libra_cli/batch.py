"""``libra batch``: fast, resumable, batch-invariant report generation over a whole dataset.

Pieces, each testable without a model:

- readers turn a questions JSONL (spec §7), a CSV, or a Hugging Face dataset (hub name, local
  folder, parquet) into :class:`Item` s plus :class:`ErrorRecord` s for the bad rows;
- :func:`plan_batches` buckets items by prompt length (less padding) and keeps samples that share
  an image next to each other (so the encoder-output cache hits);
- :class:`ImagePrefetcher` decodes and preprocesses images in background threads while the
  model runs; :class:`EncoderCache` keeps each image's encoder output until its last use, so an
  image shared by several samples (a prior that is also a current) is encoded once per run;
- :class:`AnswerWriter` appends whole lines per batch with one ``write`` + ``fsync``, repairs a
  torn tail left by ``kill -9`` and skips finished ``question_id`` s on rerun; at the end the
  output is rewritten atomically in input order, so shards, resumes and batch sizes all give the
  same bytes.

Batch invariance comes from the core: :func:`libra_cli.generation.generate` left-pads and scatters
each sample's image features into its own placeholders; here the features are computed per image
(cached) and joined per sample exactly as ``get_image_features`` does.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libra_cli.errors import InputError

EXIT_SAMPLES_FAILED = 1
_SHORTUUID = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_NS = uuid.UUID("6c1b1f0e-4b7a-4a53-9d1e-6c1b1f0e4b7a")


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


def answer_id(model_id: str, qid: Any, settings: dict[str, Any]) -> str:
    """A deterministic 22-character shortuuid-style id, so reruns and merges give identical files."""
    u = uuid.uuid5(_NS, json.dumps([model_id, qid_key(qid), settings], sort_keys=True))
    n, out = u.int, []
    for _ in range(22):
        n, r = divmod(n, len(_SHORTUUID))
        out.append(_SHORTUUID[r])
    return "".join(out)


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
    """Questions JSONL (``question_id, image, text, reference?``); bad lines become errors with their line number."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"questions file '{path}' does not exist; check the path")
    folder = Path(image_folder).expanduser() if image_folder else path.parent
    items: list[Item] = []
    errors: list[ErrorRecord] = []
    seen: dict[str, str] = {}
    with open(path, encoding="utf-8-sig") as fh:
        raw = fh.read()
    lines: Iterable[tuple[int, Any]]
    if path.suffix.lower() == ".json" and raw.lstrip().startswith("["):
        try:
            lines = [(i + 1, rec) for i, rec in enumerate(json.loads(raw))]
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix it or use JSONL") from exc
    else:
        lines = _jsonl_lines(raw)
    for lineno, rec in lines:
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
        cur, prior = _image_pair(rec.get("image"), folder)
        item = Item(idx, qid, cur, prior, _text(rec.get("text")), _text(rec.get("context")),
                    _text(rec.get("reference")), where)
        if _check_item(item, seen, errors):
            items.append(item)
    return items, errors


def _jsonl_lines(raw: str) -> Iterator[tuple[int, Any]]:
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, ValueError(exc.msg)


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


def open_dataset(source: str, config: str | None = None, split: str | None = "test") -> Any:
    """A ``datasets.Dataset`` from a hub name, a ``save_to_disk`` folder, a data folder or a parquet file."""
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
    if isinstance(ds, datasets.DatasetDict):
        if split in ds:
            ds = ds[split]
        elif len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise InputError(f"dataset '{source}' has splits {', '.join(ds)}; choose one with --split")
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


def read_input(source: str | None, *, dataset: str | None = None, config: str | None = None, split: str = "test",
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


# ----------------------------------------------------------------------------- sharding and planning


def shard_items(items: list[Item], errors: list[ErrorRecord], num_shards: int, shard: int
                ) -> tuple[list[Item], list[ErrorRecord]]:
    """Round-robin by input position: every shard sees the same input, so the split is deterministic."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise InputError(f"--shard must be in 0..{num_shards - 1} (got {shard} of {num_shards})")
    if num_shards == 1:
        return items, errors
    return ([i for i in items if i.index % num_shards == shard],
            [e for e in errors if e.index % num_shards == shard])


def shard_path(out: Path, num_shards: int, shard: int) -> Path:
    """``answers.jsonl`` -> ``answers.shard-01-of-04.jsonl`` (the shard's own resumable file)."""
    out = Path(out)
    stem, suffix = (out.name[: -len(out.suffix)], out.suffix) if out.suffix else (out.name, "")
    return out.with_name(f"{stem}.shard-{shard:02d}-of-{num_shards:02d}{suffix}")


def errors_path(out: Path) -> Path:
    return Path(str(out) + ".errors.jsonl")


def plan_batches(items: list[Item], lengths: dict[int, int], batch_size: int) -> list[list[Item]]:
    """Length-bucketed batches, longest first (an OOM shows up at once, not after an hour).

    Within equal lengths, samples that share an image (connected through current/prior) are kept
    together so the encoder cache hits within a batch or the next one.
    """
    parent: dict[str, str] = {}

    def find(k: str) -> str:
        while parent.setdefault(k, k) != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for it in items:
        if it.prior is not None:
            a, b = find(it.current.key), find(it.prior.key)
            if a != b:
                parent[b] = a
    first: dict[str, int] = {}
    for it in items:
        first.setdefault(find(it.current.key), it.index)
    order = sorted(items, key=lambda it: (-lengths[it.index], first[find(it.current.key)], it.index))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


# ----------------------------------------------------------------------------- images


def decode_image(source: Any, loaded: Any) -> Any:
    """Any image source -> float32 ``[3, H, W]`` exactly as ``libra infer`` preprocesses it."""
    import numpy as np

    from libra_cli.images import load_and_preprocess

    if callable(source) and not isinstance(source, (str, bytes, bytearray, Path)):
        source = source()
    if isinstance(source, np.ndarray) and source.ndim == 3 and source.dtype == np.float32:
        return source
    return load_and_preprocess(source, loaded.image_processor, pad=loaded.pad_images)


class ImagePrefetcher:
    """Background decode + preprocess (threads: PIL and numpy release the GIL)."""

    def __init__(self, decode: Callable[[Any], Any], workers: int = 2) -> None:
        self._decode = decode
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="libra-img") if workers > 0 else None
        self._futures: dict[str, Future] = {}
        self.wait_s = 0.0

    def submit(self, ref: ImageRef) -> None:
        if ref.key in self._futures or self._pool is None:  # no workers: decoded in take()
            return
        self._futures[ref.key] = self._pool.submit(self._decode, ref.source)

    def take(self, ref: ImageRef) -> Any:
        """The preprocessed pixels (blocking; time spent waiting is counted); raises the decode error."""
        t = time.perf_counter()
        try:
            f = self._futures.pop(ref.key, None)
            return self._decode(ref.source) if f is None else f.result()
        finally:
            self.wait_s += time.perf_counter() - t

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class EncoderCache:
    """Encoder outputs per image key, dropped after their last planned use (and LRU over ``max_bytes``)."""

    def __init__(self, uses: dict[str, int], max_bytes: int) -> None:
        self._left = dict(uses)
        self._data: OrderedDict[str, Any] = OrderedDict()
        self._bytes = 0
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Any | None:
        v = self._data.get(key)
        if v is not None:
            self._data.move_to_end(key)
        return v

    def put(self, key: str, value: Any) -> None:
        if key in self._data:
            return
        self._data[key] = value
        self._bytes += value.numel() * value.element_size()
        while self._bytes > self.max_bytes and len(self._data) > 1:
            _, old = self._data.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()

    def used(self, key: str) -> None:
        """One planned use done; free the entry after the last one."""
        self._left[key] = self._left.get(key, 1) - 1
        if self._left[key] <= 0 and key in self._data:
            old = self._data.pop(key)
            self._bytes -= old.numel() * old.element_size()

    def __len__(self) -> int:
        return len(self._data)


# ----------------------------------------------------------------------------- output


def _read_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines of ``path`` (a torn tail is cut off the file); returns (records, bad lines)."""
    if not path.exists():
        return [], 0
    with open(path, "rb+") as fh:
        data = fh.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # killed mid-write: drop the partial line
            fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())
            data = data[:end]
    recs, bad = [], 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict) and "question_id" in rec:
            recs.append(rec)
        else:
            bad += 1
    return recs, bad


class AnswerWriter:
    """Append-only answers JSONL: one ``os.write`` + ``fsync`` per batch, no duplicates on resume."""

    def __init__(self, path: Path, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite and self.path.exists():
            self.path.unlink()
        recs, self.bad_lines = _read_lines(self.path)
        self.done: dict[str, dict[str, Any]] = {}
        for r in recs:
            self.done.setdefault(qid_key(r["question_id"]), r)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, records: list[dict[str, Any]]) -> None:
        fresh = [r for r in records if qid_key(r["question_id"]) not in self.done]
        if not fresh:
            return
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fresh).encode("utf-8")
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)
        for r in fresh:
            self.done[qid_key(r["question_id"])] = r

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def write_atomic_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Write a JSONL file via a temp file + rename: readers and kills see old or new, never half."""
    from libra_cli.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def ordered_answers(items_order: list[str], answers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Answers in input order; answers for ids not in this input (kept, never dropped) go last."""
    seen = set()
    out = []
    for k in items_order:
        if k in answers and k not in seen:
            out.append(answers[k])
            seen.add(k)
    out.extend(v for k, v in answers.items() if k not in seen)
    return out


def merge_shards(out: Path, num_shards: int, order: list[str], error_order: list[tuple[int, dict[str, Any]]] | None = None
                 ) -> bool:
    """Merge finished shards into ``out`` (input order) once every shard has its ``.done`` marker.

    Safe to call from every shard: a lock file serialises merges and the merge happens once.
    Returns True when ``out`` now holds the merged answers.
    """
    out = Path(out)
    lock = out.with_name(f".{out.name}.merge.lock")
    with open(lock, "w") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        shards = [shard_path(out, num_shards, k) for k in range(num_shards)]
        markers = [Path(str(s) + ".done") for s in shards]
        if not all(m.exists() for m in markers):
            return False
        answers: dict[str, dict[str, Any]] = {}
        for s in shards:  # this run's answers first: they win over an earlier merge (--overwrite)
            for r in _read_lines(s)[0]:
                answers.setdefault(qid_key(r["question_id"]), r)
        for prev in _read_lines(out)[0] if out.exists() else []:
            answers.setdefault(qid_key(prev["question_id"]), prev)
        write_atomic_jsonl(out, ordered_answers(order, answers))
        errs: list[tuple[int, dict[str, Any]]] = []
        for s in shards:
            for i, r in enumerate(_read_lines(errors_path(s))[0]):
                errs.append((int(r.pop("_index", i)), r))
        errs.sort(key=lambda t: t[0])
        write_atomic_jsonl(errors_path(out), [r for _, r in errs])
        for s, m in zip(shards, markers, strict=True):
            for p in (s, errors_path(s), m):
                if p.exists():
                    p.unlink()
    return True


# ----------------------------------------------------------------------------- batch size


def per_sample_bytes(config: Any, prompt_len: int, max_new_tokens: int, num_beams: int, elem_bytes: int) -> int:
    """Rough GPU bytes one sample needs while generating: KV cache + logits + prefill activations."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = int(text.num_hidden_layers)
    heads = int(text.num_attention_heads)
    kv = int(getattr(text, "num_key_value_heads", None) or heads)
    hidden = int(text.hidden_size)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    inter = int(getattr(text, "intermediate_size", 4 * hidden))
    vocab = int(text.vocab_size)
    total = prompt_len + max_new_tokens
    kv_cache = 2 * layers * kv * head_dim * total * elem_bytes * num_beams
    logits = vocab * 4 * 3 * num_beams  # float32 logits, processed scores, softmax
    prefill = prompt_len * (4 * hidden + 2 * inter) * elem_bytes + heads * prompt_len * prompt_len * elem_bytes
    return kv_cache + logits + prefill


def pick_batch_size(free_bytes: int, sample_bytes: int, n_items: int, cap: int = 256, headroom: float = 0.7) -> int:
    """The largest batch whose estimated need fits in ``headroom`` of the free memory (at least 1)."""
    fit = int(free_bytes * headroom) // max(sample_bytes, 1)
    return max(1, min(fit, cap, max(n_items, 1)))


def auto_batch_size(loaded: Any, settings: Any, max_prompt_len: int, n_items: int) -> int:
    """``--batch-size auto``: from free GPU memory on CUDA; 16 elsewhere (CPU gains little beyond)."""
    import torch

    dev = str(loaded.device)
    if not dev.startswith("cuda") or not torch.cuda.is_available():
        return max(1, min(16, n_items))
    free, _ = torch.cuda.mem_get_info(torch.device(dev))
    elem = torch.empty((), dtype=loaded.dtype).element_size()
    beams = max(settings.num_beams, settings.num_return_sequences)
    return pick_batch_size(free, per_sample_bytes(loaded.config, max_prompt_len, settings.max_new_tokens, beams, elem),
                           n_items)


def _is_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


# ----------------------------------------------------------------------------- the run


@dataclass
class RunStats:
    """What a run did (the summary table and the benchmark read this)."""

    total: int = 0
    resumed: int = 0
    answered: int = 0
    failed: int = 0
    input_errors: int = 0
    new_tokens: int = 0
    batches: int = 0
    batch_size: int = 0
    wall_s: float = 0.0
    model_s: float = 0.0
    image_wait_s: float = 0.0
    encoded_images: int = 0
    cache_hits: int = 0
    merged: bool | None = None
    out: str = ""
    errors_out: str = ""

    @property
    def samples_per_s(self) -> float:
        return self.answered / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def image_wait_fraction(self) -> float:
        return self.image_wait_s / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.update(samples_per_s=self.samples_per_s, tokens_per_s=self.tokens_per_s,
                 image_wait_fraction=self.image_wait_fraction)
        return d


def model_id_for(model: str) -> str:
    """The original's ``get_model_name_from_path``: last folder name (``parent_checkpoint-N`` for checkpoints)."""
    parts = str(model).rstrip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


class BatchRunner:
    """Runs items through the model in bucketed batches and writes answers as they finish."""

    def __init__(self, loaded: Any, settings: Any, *, batch_size: int | str = "auto", workers: int = 2,
                 prefetch: int = 2, cache_mb: int = 2048, model_id: str | None = None,
                 on_batch: Callable[[int, int], None] | None = None) -> None:
        self.loaded = loaded
        self.settings = settings
        self.batch_size = batch_size
        self.workers = workers
        self.prefetch = max(1, prefetch)
        self.cache_bytes = cache_mb << 20
        self.model_id = model_id or model_id_for(loaded.name)
        self.on_batch = on_batch
        self.settings_dict = settings.to_dict()

    # -- public -------------------------------------------------------------------------------
    def run(self, items: list[Item], out: Path, input_errors: list[ErrorRecord] | None = None,
            overwrite: bool = False, order: list[str] | None = None, on_start: Callable[[int], None] | None = None,
            skip: set[str] | None = None, keep_error_index: bool = False) -> RunStats:
        """Answer every item not yet in ``out`` (nor in ``skip``); returns the run's stats.

        ``order``: question keys in input order for the final rewrite (default: ``items``' order).
        ``keep_error_index``: shard error files keep ``_index`` so the merge can order them.
        """
        from libra_cli.generation import prompt_ids

        t0 = time.perf_counter()
        out = Path(out)
        stats = RunStats(out=str(out), errors_out=str(errors_path(out)))
        writer = AnswerWriter(out, overwrite=overwrite)
        try:
            self._check_resume(writer, out)
        except InputError:
            writer.close()
            raise
        errors: list[ErrorRecord] = list(input_errors or [])
        stats.input_errors = len(errors)
        stats.total = len(items) + len(errors)
        err_fd = os.open(errors_path(out), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._write_errors(err_fd, errors)
        skip = skip or set()
        pending = [it for it in items if it.key not in writer.done and it.key not in skip]
        stats.resumed = len(items) - len(pending)
        lengths: dict[int, int] = {}
        ok: list[Item] = []
        bad: list[ErrorRecord] = []
        for it in pending:
            try:
                lengths[it.index] = len(prompt_ids(self.loaded, self._sample(it))[1])
                ok.append(it)
            except InputError as exc:
                bad.append(ErrorRecord(it.index, it.question_id, "input", str(exc), it.where))
        self._write_errors(err_fd, bad)
        errors += bad
        bs = self.batch_size
        if bs == "auto":
            bs = auto_batch_size(self.loaded, self.settings, max(lengths.values(), default=1), len(ok))
        bs = int(bs)
        stats.batch_size = bs
        if on_start:
            on_start(len(ok))
        uses_prior = self.loaded.uses_prior
        plan = plan_batches(ok, lengths, bs)
        uses: dict[str, int] = {}
        for it in ok:
            for ref in self._refs(it, uses_prior):
                uses[ref.key] = uses.get(ref.key, 0) + 1
        cache = EncoderCache(uses, self.cache_bytes)
        pre = ImagePrefetcher(lambda src: decode_image(src, self.loaded), self.workers)
        bad_images: dict[str, str] = {}
        try:
            for b in plan[: self.prefetch]:
                self._submit(pre, cache, b, uses_prior)
            queue = list(plan)
            bi = 0
            while bi < len(queue):
                batch = queue[bi]
                for nb in queue[bi + 1 : bi + 1 + self.prefetch]:
                    self._submit(pre, cache, nb, uses_prior)
                try:
                    records, errs, ntok = self._run_batch(batch, pre, cache, bad_images, uses_prior, stats)
                except Exception as exc:
                    if _is_oom(exc) and len(batch) > 1:  # back off: split this batch and the rest
                        self._free_cuda()
                        half = max(1, len(batch) // 2)
                        rest = [it for b in queue[bi:] for it in b]
                        queue = queue[:bi] + [rest[i : i + half] for i in range(0, len(rest), half)]
                        stats.batch_size = half
                        continue
                    raise
                writer.append(records)
                self._write_errors(err_fd, errs)
                errors += errs
                stats.answered += len(records)
                stats.failed += len(errs)
                stats.new_tokens += ntok
                stats.batches += 1
                if self.on_batch:
                    self.on_batch(len(records) + len(errs), ntok)
                bi += 1
        finally:
            pre.close()
            writer.close()
            os.close(err_fd)
        stats.image_wait_s = pre.wait_s
        stats.cache_hits = cache.hits
        stats.encoded_images = cache.misses
        stats.failed += stats.input_errors
        # final, atomic rewrite in input order: identical bytes whatever the batch size / resumes
        keys = order if order is not None else [it.key for it in sorted(items, key=lambda i: i.index)]
        write_atomic_jsonl(out, ordered_answers(keys, writer.done))
        errors.sort(key=lambda e: e.index)
        write_atomic_jsonl(errors_path(out), [e.to_dict() | ({"_index": e.index} if keep_error_index else {})
                                              for e in errors])
        stats.wall_s = time.perf_counter() - t0
        return stats

    # -- helpers ------------------------------------------------------------------------------
    def _check_resume(self, writer: AnswerWriter, out: Path) -> None:
        if not writer.done:
            return
        first = next(iter(writer.done.values()))
        prev = (first.get("metadata") or {}).get("settings")
        if first.get("model_id") != self.model_id or (prev is not None and prev != self.settings_dict):
            raise InputError(
                f"{out} holds answers from another model or other settings (model_id {first.get('model_id')!r}); "
                "use a new --out, or --overwrite to start again"
            )

    @staticmethod
    def _write_errors(fd: int, errs: list[ErrorRecord]) -> None:
        if not errs:
            return
        data = "".join(json.dumps(e.to_dict() | {"_index": e.index}, ensure_ascii=False) + "\n" for e in errs)
        os.write(fd, data.encode("utf-8"))
        os.fsync(fd)

    @staticmethod
    def _refs(it: Item, uses_prior: bool) -> list[ImageRef]:
        return [it.current] + ([it.prior] if uses_prior and it.prior is not None else [])

    def _submit(self, pre: ImagePrefetcher, cache: EncoderCache, batch: list[Item], uses_prior: bool) -> None:
        for it in batch:
            for ref in self._refs(it, uses_prior):
                if cache.get(ref.key) is None:
                    pre.submit(ref)

    @staticmethod
    def _free_cuda() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _sample(self, it: Item) -> Any:
        """A Sample naming the images; ``generate`` gets their features, so nothing is re-read."""
        from libra_cli.generation import Sample

        return Sample(it.current.key, it.prior.key if it.prior is not None else None, it.query, it.context, id=it.key)

    def _encode(self, batch: list[Item], pre: ImagePrefetcher, cache: EncoderCache, bad_images: dict[str, str],
                uses_prior: bool) -> tuple[list[Item], list[ErrorRecord]]:
        """Encode the batch's uncached images (decode errors -> sample errors); returns the good items."""
        import numpy as np
        import torch

        model = self.loaded.model
        dev = model.get_input_embeddings().weight.device
        todo: dict[str, Any] = {}
        for it in batch:
            for ref in self._refs(it, uses_prior):
                if ref.key in bad_images:
                    continue
                if ref.key in todo:
                    cache.hits += 1
                    continue
                if cache.get(ref.key) is not None:
                    cache.hits += 1
                    continue
                try:
                    todo[ref.key] = pre.take(ref)
                except InputError as exc:
                    bad_images[ref.key] = str(exc)
                except Exception as exc:  # noqa: BLE001 - any decode failure is this sample's problem
                    bad_images[ref.key] = f"cannot load image: {type(exc).__name__}: {exc}"
        if todo:
            keys = list(todo)
            pix = torch.from_numpy(np.stack([todo[k] for k in keys]))
            with torch.inference_mode():
                enc = model.encode_images(pix.to(dev, self.loaded.dtype))
            for k, e in zip(keys, enc, strict=True):
                cache.put(k, e)
            cache.misses += len(keys)
        good, errs = [], []
        for it in batch:
            bad = next((bad_images[r.key] for r in self._refs(it, uses_prior) if r.key in bad_images), None)
            if bad:
                errs.append(ErrorRecord(it.index, it.question_id, "image", bad, it.where))
            else:
                good.append(it)
        return good, errs

    def _features(self, items: list[Item], cache: EncoderCache, uses_prior: bool) -> Any:
        """``get_image_features`` from cached encoder outputs: current, and prior (or the current: dummy prior)."""
        import torch

        model = self.loaded.model
        cur = torch.stack([cache.get(it.current.key) for it in items])
        prior = None
        if uses_prior:
            prior = torch.stack([cache.get((it.prior or it.current).key) for it in items])
        with torch.inference_mode():
            return model.connect(cur, prior)

    def _run_batch(self, batch: list[Item], pre: ImagePrefetcher, cache: EncoderCache, bad_images: dict[str, str],
                   uses_prior: bool, stats: RunStats) -> tuple[list[dict[str, Any]], list[ErrorRecord], int]:
        from libra_cli.generation import generate

        t = time.perf_counter()
        good, errs = self._encode(batch, pre, cache, bad_images, uses_prior)
        records: list[dict[str, Any]] = []
        ntok = 0
        if good:
            feats = self._features(good, cache, uses_prior)
            samples = [self._sample(it) for it in good]
            try:
                reports = generate(self.loaded, samples, self.settings, image_features=feats)
            except InputError as exc:  # a sample the model refuses: isolate it
                if len(good) == 1:
                    errs.append(ErrorRecord(good[0].index, good[0].question_id, "generate", str(exc), good[0].where))
                    reports = []
                    good = []
                else:
                    raise
            ntok = int(reports[0].timings.get("new_tokens", 0)) if reports else 0
            for it, rep in zip(good, reports, strict=True):
                records.append(self._record(it, rep))
        for it in batch:
            for ref in self._refs(it, uses_prior):
                cache.used(ref.key)
        stats.model_s += time.perf_counter() - t
        return records, errs, ntok

    def _record(self, it: Item, rep: Any) -> dict[str, Any]:
        from libra_cli.generation import _default_query

        meta: dict[str, Any] = {"settings": self.settings_dict, "conv_mode": self.loaded.conv_mode,
                                "prior_is_dummy": it.prior is None}
        if self.settings.num_return_sequences > 1:
            meta["candidates"] = [{"text": c.text, "score": c.score} for c in rep.candidates]
        if it.reference is not None:
            meta["reference"] = it.reference
        return {
            "question_id": it.question_id,
            "prompt": it.query if it.query is not None else _default_query(self.loaded),
            "text": rep.text,
            "answer_id": answer_id(self.model_id, it.question_id, self.settings_dict),
            "model_id": self.model_id,
            "metadata": meta,
        }


def shard_from_env() -> tuple[int, int]:
    """(num_shards, shard) from ``accelerate launch`` / ``torchrun`` (WORLD_SIZE, RANK), else (1, 0)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    except ValueError:
        return 1, 0


def resolve_shard(num_shards: int | None, shard: int | None) -> tuple[int, int]:
    """(num_shards, shard) from the flags, else from the launcher's environment."""
    env_n, env_k = shard_from_env()
    n = num_shards if num_shards is not None else env_n
    k = shard if shard is not None else (env_k if num_shards is None else 0)
    if n < 1 or not 0 <= k < n:
        raise InputError(f"--shard must be in 0..{max(n - 1, 0)} (got {k}); --num-shards must be >= 1")
    return n, k


def parse_batch_size(value: str) -> int | str:
    """``auto`` or a positive integer."""
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise InputError(f"--batch-size must be a positive number or auto (got {value!r})")
    return int(value)


def apply_limit(items: list[Item], errors: list[ErrorRecord], limit: int | None) -> tuple[list[Item], list[ErrorRecord]]:
    """The first ``limit`` samples, with the input errors that come before the last of them."""
    if limit is None:
        return items, errors
    cut = items[limit - 1].index if len(items) >= limit else None
    return items[:limit], [e for e in errors if cut is None or e.index <= cut]


def shard_device(device: str, num_shards: int, shard: int) -> str:
    """With several shards on a GPU machine, one GPU per process holding the whole model."""
    if num_shards > 1 and device == "auto":
        import torch

        if torch.cuda.is_available():
            os.environ["LIBRA_NO_DEVICE_MAP"] = "1"
            return f"cuda:{int(os.environ.get('LOCAL_RANK', shard)) % torch.cuda.device_count()}"
    return device


def run_batch(runner: BatchRunner, items: list[Item], errors: list[ErrorRecord], out: str | Path, *,
              num_shards: int = 1, shard: int = 0, overwrite: bool = False,
              on_start: Callable[[int], None] | None = None) -> RunStats:
    """One whole ``libra batch`` run: shard, resume, generate, and merge the shards when all are done."""
    out = Path(out)
    order = [it.key for it in items]
    if num_shards == 1:
        stats = runner.run(items, out, errors, overwrite=overwrite, order=order, on_start=on_start)
        stats.merged = None
        return stats
    mine, my_errors = shard_items(items, errors, num_shards, shard)
    target = shard_path(out, num_shards, shard)
    marker = Path(str(target) + ".done")
    if overwrite and marker.exists():
        marker.unlink()
    skip = set() if overwrite else {qid_key(r["question_id"]) for r in _read_lines(out)[0]} if out.exists() else set()
    stats = runner.run(mine, target, my_errors, overwrite=overwrite, order=[it.key for it in mine],
                       on_start=on_start, skip=skip, keep_error_index=True)
    marker.write_text(json.dumps({"answered": stats.answered, "failed": stats.failed}) + "\n")
    stats.merged = merge_shards(out, num_shards, order)
    if stats.merged:
        stats.out, stats.errors_out = str(out), str(errors_path(out))
    return stats
