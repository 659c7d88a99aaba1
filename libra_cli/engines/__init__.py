"""Engines: one contract (:mod:`~libra_cli.engines.base`), peers registered by name (:mod:`~libra_cli.engines.registry`).

- :mod:`~libra_cli.engines.hf`: transformers' ``generate`` in this process (greedy, sampling, beams);
- :mod:`~libra_cli.engines.ccd`: Clinical Contrastive Decoding in this process (:mod:`libra_cli.ccd`);
- :mod:`~libra_cli.engines.vllm`: vLLM in this process (:mod:`libra_cli.vllm_engine` is its plugin);
- :mod:`~libra_cli.engines.remote`: an OpenAI-compatible Libra server (``libra serve --engine vllm --api``).

No engine imports another; what they share is :mod:`libra_cli.requests` (samples, settings,
reports, prompt rendering). docs/architecture.md#adding-an-engine says how to add one.
Names are re-exported lazily: importing this package imports no engine.
"""

from __future__ import annotations

from libra_cli.lazy import lazy_exports

_LAZY = {
    "Engine": "libra_cli.engines.base",
    "BatchEngine": "libra_cli.engines.base",
    "Session": "libra_cli.engines.base",
    "SyncSession": "libra_cli.engines.base",
    "Request": "libra_cli.engines.base",
    "Done": "libra_cli.engines.base",
    "ENGINES": "libra_cli.engines.registry",
    "engine_class": "libra_cli.engines.registry",
    "for_model": "libra_cli.engines.registry",
    "load": "libra_cli.engines.registry",
    "name_for": "libra_cli.engines.registry",
    "names": "libra_cli.engines.registry",
}
__getattr__, __all__ = lazy_exports(__name__, _LAZY)
