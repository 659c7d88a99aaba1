"""Per-report (or per-pair) scorer outputs, cached by text hash, so re-scoring only scores what changed.

One SQLite file in libra's cache; every entry is keyed by a namespace (scorer, model commits,
package versions, settings) and the sha256 of the text (or of the reference/prediction pair), so a
new model, package version or setting never reuses stale outputs.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def text_key(*texts: str) -> str:
    """sha256 of the text(s) (NUL-joined for pairs)."""
    return hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()


class OutputCache:
    """JSON values by (namespace, text hash). ``path=None`` disables caching (nothing is stored)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self.hits = 0
        self.misses = 0

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30)
            self._db.execute("CREATE TABLE IF NOT EXISTS outputs (ns TEXT, key TEXT, value TEXT, PRIMARY KEY (ns, key))")
        return self._db

    def get_many(self, namespace: str, keys: Sequence[str]) -> dict[str, Any]:
        """Cached values of ``keys`` (missing keys are absent)."""
        if self.path is None or not keys:
            return {}
        out: dict[str, Any] = {}
        db = self._conn()
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, value in db.execute(f"SELECT key, value FROM outputs WHERE ns = ? AND key IN ({marks})", [namespace, *chunk]):
                out[key] = json.loads(value)
        return out

    def put_many(self, namespace: str, items: dict[str, Any]) -> None:
        if self.path is None or not items:
            return
        db = self._conn()
        with db:
            db.executemany("INSERT OR REPLACE INTO outputs VALUES (?, ?, ?)",
                           [(namespace, k, json.dumps(v)) for k, v in items.items()])

    def compute(self, namespace: str, keys: Sequence[str], inputs: Sequence[Any],
                fn: Callable[[list[Any]], list[Any]]) -> list[Any]:
        """Values for ``keys``: cached ones read, the rest computed by ``fn`` on their (distinct) inputs."""
        cached = self.get_many(namespace, keys)
        todo: dict[str, Any] = {}
        for key, item in zip(keys, inputs, strict=True):
            if key not in cached and key not in todo:
                todo[key] = item
        self.hits += len(keys) - sum(1 for k in keys if k in todo)
        self.misses += len(todo)
        if todo:
            fresh = dict(zip(todo, fn(list(todo.values())), strict=True))
            self.put_many(namespace, fresh)
            cached.update(fresh)
        return [cached[k] for k in keys]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
