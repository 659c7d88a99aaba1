"""Token streaming to a terminal, decoded with the model's own (SentencePiece-exact) decoder."""

from __future__ import annotations

import sys
from typing import Any, TextIO


class TerminalStreamer:
    """A ``generate`` streamer: prints decoded text as tokens arrive (batch 1, no beams).

    Decodes the whole answer each step and prints the new suffix, so multi-byte characters
    split over byte-fallback tokens are printed once complete.
    """

    def __init__(self, loaded: Any, out: TextIO | None = None) -> None:
        self.loaded = loaded
        self.out = out or sys.stdout
        self.ids: list[int] = []
        self.printed = ""
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        self.ids.extend(int(t) for t in value.reshape(-1).tolist())
        text = self.loaded.decode(self.ids).lstrip()
        if text.endswith("\ufffd"):
            return
        self._emit(text)

    def _emit(self, text: str) -> None:
        if text.startswith(self.printed):
            self.out.write(text[len(self.printed):])
            self.out.flush()
            self.printed = text

    def end(self) -> None:
        self._emit(self.loaded.decode(self.ids).strip())
        self.out.write("\n")
        self.out.flush()
