"""Checkpoints: the only package that knows file names, key layouts and the hub.

- :mod:`~libra_cli.checkpoint.hub`: folder or hub id -> a local folder (cache first, offline-aware);
- :mod:`~libra_cli.checkpoint.layout`: full / LoRA / projector folders, file names, key prefixes;
- :mod:`~libra_cli.checkpoint.runtime`: device, the one dtype table, attention kernel, memory sizing;
- :mod:`~libra_cli.checkpoint.tokenizer`: tokenizers and the original-exact SentencePiece codec;
- :mod:`~libra_cli.checkpoint.tower`: the image encoder a config names;
- :mod:`~libra_cli.checkpoint.load`: :func:`load_model`, :class:`LoadedModel`, :func:`assemble` (the one
  assembler, inference and training), :func:`build_lm`;
- :mod:`~libra_cli.checkpoint.registry`: published checkpoints, their prompt templates and questions.

Names are re-exported lazily so that importing the package costs nothing.
"""

from __future__ import annotations

from libra_cli.lazy import lazy_exports

_LAZY = {
    "load_model": "libra_cli.checkpoint.load",
    "LoadedModel": "libra_cli.checkpoint.load",
    "build_lm": "libra_cli.checkpoint.load",
    "assemble": "libra_cli.checkpoint.load",
    "hub_folder": "libra_cli.checkpoint.hub",
    "SpmCodec": "libra_cli.checkpoint.tokenizer",
}
__getattr__, __all__ = lazy_exports(__name__, _LAZY)
