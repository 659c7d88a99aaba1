"""Text cleaning exactly as the original Libra evaluation (lowercase, then ``clean_text``)."""

from __future__ import annotations

import re

_NEWLINES = re.compile(r"\n+")
_UNDERSCORE_DASH = re.compile(r"[_-]+")
# Kept for fidelity: after the rule above these can never match (their _ and - are gone).
_DEAD_PATTERNS = (re.compile(r"\(___, __, __\)"), re.compile(r"---, ---, ---"), re.compile(r"\(__, __, ___\)"))
_DISALLOWED = re.compile(r"[^\w\s.,:;()\-]")
_MULTISPACE = re.compile(r"\s{2,}")


def clean_text(text: str) -> str:
    """The original ``clean_text``: newlines, ``_``/``-`` runs -> space, drop odd characters, squeeze spaces.

    A single tab or other lone whitespace character survives, as in the original.
    """
    text = _NEWLINES.sub(" ", text)
    text = _UNDERSCORE_DASH.sub(" ", text)
    for pattern in _DEAD_PATTERNS:
        text = pattern.sub("", text)
    text = _UNDERSCORE_DASH.sub(" ", text)
    text = _DISALLOWED.sub("", text)
    return _MULTISPACE.sub(" ", text).strip()


def prepare(text: str, clean: bool = True) -> str:
    """What every metric sees: ``clean_text(text.lower())``, or the text untouched with ``clean=False``."""
    return clean_text(text.lower()) if clean else text
