"""LLM-judged metrics (GREEN, CRIMSON), each equal to its package, run on transformers, vLLM or an OpenAI server.

One module per judge (prompt, generation settings, parser, score: :mod:`green`, :mod:`crimson`), one per
engine behind :class:`~libra_cli.metrics.judges.base.TextGenerator` (:mod:`hf`, :mod:`vllm_gen`,
:mod:`openai_gen`), and :mod:`run` (model resolution, the per-pair cache, batching, progress).
"""

from __future__ import annotations

from libra_cli.metrics.judges.base import Judge

ENGINES = ("hf", "vllm", "openai")


def get_judge(name: str) -> Judge:
    """The judge registered as ``name`` (``green`` or ``crimson``)."""
    if name == "green":
        from libra_cli.metrics.judges.green import Green

        return Green()
    if name == "crimson":
        from libra_cli.metrics.judges.crimson import Crimson

        return Crimson()
    raise KeyError(name)


JUDGES = ("green", "crimson")
