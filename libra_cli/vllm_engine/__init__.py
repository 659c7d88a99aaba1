"""The vLLM plugin for Libra checkpoints: what the ``vllm`` engine (:mod:`libra_cli.engines.vllm`) runs in vLLM.

- :mod:`~libra_cli.vllm_engine.plugin`: the ``vllm.general_plugins`` entry point (model, tokenizer, renderer);
- :mod:`~libra_cli.vllm_engine.model`: the Libra model for vLLM (vLLM's LLM + libra's encoder and connector);
- :mod:`~libra_cli.vllm_engine.processing`: a study (current + prior) as one multimodal item;
- :mod:`~libra_cli.vllm_engine.tokenizer`, :mod:`~libra_cli.vllm_engine.chat`, :mod:`~libra_cli.vllm_engine.renderer`:
  prompts and text exactly as ``libra infer``;
- :mod:`~libra_cli.vllm_engine.options`: how vLLM runs a checkpoint (the flags) and ``vllm.LLM``'s arguments;
- :mod:`~libra_cli.vllm_engine.beams`: transformers' beam algorithm on vLLM's log-probs;
- :mod:`~libra_cli.vllm_engine.api`: the command line of vLLM's OpenAI server;
- :mod:`~libra_cli.vllm_engine.available`: the one-line error when vLLM is missing.

Importing this package imports neither vLLM nor torch; names are re-exported lazily.
"""

from __future__ import annotations

from libra_cli.lazy import lazy_exports

_LAZY = {
    "require_vllm": "libra_cli.vllm_engine.available",
    "INSTALL_HINT": "libra_cli.vllm_engine.available",
    "VllmOptions": "libra_cli.vllm_engine.options",
}
__getattr__, __all__ = lazy_exports(__name__, _LAZY)
