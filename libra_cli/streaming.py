"""Token streaming, decoded with the model's own (SentencePiece-exact) decoder.

One base turns ``generate``'s token callbacks into "the answer so far"; the terminal (``libra infer``),
an engine's ``on_text`` callback and the web app (``libra serve``, through a :class:`TextQueue`)
only differ in what they do with it.
"""

from __future__ import annotations

import queue
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from libra_cli.errors import LibraError
from libra_cli.requests import Model


class DecodingStreamer:
    """A ``generate`` streamer (batch 1, no beams) that reports the whole answer so far.

    Decodes all answer ids each step, so a multi-byte character split over byte-fallback tokens
    is reported once complete (text ending in U+FFFD is held back). Subclasses implement
    :meth:`on_text` (called when the text grows) and :meth:`on_end`.
    """

    def __init__(self, loaded: Model) -> None:
        self.loaded = loaded
        self.ids: list[int] = []
        self.text = ""
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # the first call carries the prompt
            self._prompt_seen = True
            return
        self.ids.extend(int(t) for t in value.reshape(-1).tolist())
        text = self.loaded.decode(self.ids).lstrip()
        if text.endswith("\ufffd") or text == self.text:
            return
        self.text = text
        self.on_text(text)

    def end(self) -> None:
        self.on_end(self.loaded.decode(self.ids).strip())

    def on_text(self, text: str) -> None:
        raise NotImplementedError

    def on_end(self, text: str) -> None:
        raise NotImplementedError


class TextStreamer(DecodingStreamer):
    """Hands the answer so far to ``on_text`` (how token engines serve an engine's ``on_text`` callback)."""

    def __init__(self, loaded: Model, on_text: Callable[[str], None]) -> None:
        super().__init__(loaded)
        self._on_text = on_text

    def on_text(self, text: str) -> None:
        self._on_text(text)

    def on_end(self, text: str) -> None:
        """The caller gets the whole answer from the report."""


class TerminalStreamer(DecodingStreamer):
    """Prints the new suffix of the answer as tokens arrive."""

    def __init__(self, loaded: Model, out: TextIO | None = None) -> None:
        super().__init__(loaded)
        self.out = out or sys.stdout
        self.printed = ""

    def on_text(self, text: str) -> None:
        if text.startswith(self.printed):
            self.out.write(text[len(self.printed):])
            self.out.flush()
            self.printed = text

    def on_end(self, text: str) -> None:
        self.on_text(text)
        self.out.write("\n")
        self.out.flush()


_STOP = object()


class TextQueue:
    """The answer so far, from a worker thread to the thread that iterates (as transformers' ``TextIteratorStreamer``).

    ``put`` the growing text, then ``close``; a failure in the worker is handed over with ``fail``
    and re-raised in the iterating thread.
    """

    def __init__(self, timeout: float | None = 600.0) -> None:
        self.timeout = timeout
        self._q: queue.Queue[Any] = queue.Queue()

    def put(self, text: str) -> None:
        self._q.put(text)

    def close(self) -> None:
        self._q.put(_STOP)

    def fail(self, exc: BaseException) -> None:
        self._q.put(exc)

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                item = self._q.get(timeout=self.timeout)
            except queue.Empty as exc:
                raise LibraError(f"generation produced nothing for {self.timeout:.0f} s; try again") from exc
            if item is _STOP:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class QueueStreamer(DecodingStreamer):
    """A ``generate`` streamer feeding a :class:`TextQueue`: ``generate`` runs in a worker thread and
    calls ``put``/``end``; the request handler iterates over the streamer (see :class:`DecodingStreamer`)."""

    def __init__(self, loaded: Model, timeout: float | None = 600.0) -> None:
        super().__init__(loaded)
        self.queue = TextQueue(timeout)

    def on_text(self, text: str) -> None:
        self.queue.put(text)

    def on_end(self, text: str) -> None:
        self.queue.close()

    def fail(self, exc: BaseException) -> None:
        self.queue.fail(exc)

    def __iter__(self) -> Iterator[str]:
        return iter(self.queue)
