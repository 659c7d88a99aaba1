"""Token streaming, decoded with the model's own (SentencePiece-exact) decoder.

One base turns ``generate``'s token callbacks into "the answer so far"; the terminal (``libra infer``)
and the web app (``libra serve``) only differ in what they do with it.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


class DecodingStreamer:
    """A ``generate`` streamer (batch 1, no beams) that reports the whole answer so far.

    Decodes all answer ids each step, so a multi-byte character split over byte-fallback tokens
    is reported once complete (text ending in U+FFFD is held back). Subclasses implement
    :meth:`on_text` (called when the text grows) and :meth:`on_end`.
    """

    def __init__(self, loaded: Any) -> None:
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


class TerminalStreamer(DecodingStreamer):
    """Prints the new suffix of the answer as tokens arrive."""

    def __init__(self, loaded: Any, out: TextIO | None = None) -> None:
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
