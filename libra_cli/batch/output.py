"""Batch output: an append-only answers JSONL that survives ``kill -9``, and the final ordered rewrite.

Answers are appended whole per batch (one ``write`` + ``fsync``); a torn tail is cut on restart;
finished ``question_id`` s are skipped on rerun; at the end the file is rewritten atomically in
input order, so shards, resumes and batch sizes all give the same bytes.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from pathlib import Path
from typing import Any

from libra_cli.atomic import naming, write_jsonl_atomic
from libra_cli.batch.inputs import qid_key
from libra_cli.batch.plan import errors_path, shard_path
from libra_cli.errors import InputError

_SHORTUUID = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_NS = uuid.UUID("6c1b1f0e-4b7a-4a53-9d1e-6c1b1f0e4b7a")


def answer_id(model_id: str, qid: Any, settings: dict[str, Any]) -> str:
    """A deterministic 22-character shortuuid-style id, so reruns and merges give identical files."""
    u = uuid.uuid5(_NS, json.dumps([model_id, qid_key(qid), settings], sort_keys=True))
    n, out = u.int, []
    for _ in range(22):
        n, r = divmod(n, len(_SHORTUUID))
        out.append(_SHORTUUID[r])
    return "".join(out)


def read_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
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
        with naming(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _lock(self.path)
        try:
            if overwrite and self.path.exists():
                self.path.unlink()
            recs, self.bad_lines = read_lines(self.path)
            self.done: dict[str, dict[str, Any]] = {}
            for r in recs:
                self.done.setdefault(qid_key(r["question_id"]), r)
            with naming(self.path):
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except BaseException:
            self._lock.close()
            raise

    def append(self, records: list[dict[str, Any]]) -> None:
        fresh = [r for r in records if qid_key(r["question_id"]) not in self.done]
        if not fresh:
            return
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fresh).encode("utf-8")
        view = memoryview(data)
        with naming(self.path):
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
        if not self._lock.closed:
            lock_path(self.path).unlink(missing_ok=True)  # the next run locks a fresh file (see _lock)
            self._lock.close()  # releases the flock


def lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


def _lock(out: Path) -> Any:
    """An exclusive lock on ``out`` for this process's lifetime: two runs appending to one file would interleave."""
    while True:
        fh = open(lock_path(out), "a+")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            fh.close()
            raise InputError(f"another libra batch is writing {out} (lock {lock_path(out)}); wait for it to finish "
                             "or use another --out") from exc
        try:  # the holder removes the file when done: a lock on a removed file guards nothing, so take a new one
            if os.fstat(fh.fileno()).st_ino == os.stat(lock_path(out)).st_ino:
                return fh
        except FileNotFoundError:
            pass
        fh.close()


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


def merge_shards(out: Path, num_shards: int, order: list[str]) -> int | None:
    """Merge finished shards into ``out`` (input order) once every shard has its ``.done`` marker.

    Safe to call from every shard: a lock file serialises merges and the merge happens once.
    Returns None while some shard is unfinished, else the number of samples that failed in all
    shards (the merging shard reports them for everyone, see ``run_batch``).
    """
    out = Path(out)
    lock = out.with_name(f".{out.name}.merge.lock")
    with open(lock, "w") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        shards = [shard_path(out, num_shards, k) for k in range(num_shards)]
        markers = [Path(str(s) + ".done") for s in shards]
        if not all(m.exists() for m in markers):
            return None
        failed = 0
        for m in markers:
            try:
                failed += int(json.loads(m.read_text()).get("failed", 0))
            except (ValueError, AttributeError):
                failed += 1  # an unreadable marker: report a failure rather than hide one
        answers: dict[str, dict[str, Any]] = {}
        for s in shards:  # this run's answers first: they win over an earlier merge (--overwrite)
            for r in read_lines(s)[0]:
                answers.setdefault(qid_key(r["question_id"]), r)
        for prev in read_lines(out)[0] if out.exists() else []:
            answers.setdefault(qid_key(prev["question_id"]), prev)
        write_jsonl_atomic(out, ordered_answers(order, answers))
        errs: list[tuple[int, dict[str, Any]]] = []
        for s in shards:
            for i, r in enumerate(read_lines(errors_path(s))[0]):
                errs.append((int(r.pop("_index", i)), r))
        errs.sort(key=lambda t: t[0])
        write_jsonl_atomic(errors_path(out), [r for _, r in errs])
        for s, m in zip(shards, markers, strict=True):
            for p in (s, errors_path(s), m):
                if p.exists():
                    p.unlink()
        lock.unlink(missing_ok=True)  # a shard still waiting on it then finds no markers: it merges nothing
    return failed
