"""vLLM plugin entry point (``vllm.general_plugins``): makes Libra checkpoints runnable by vLLM.

vLLM calls :func:`register` in every process it starts (engine, workers, API server). It only
records names: the model, tokenizer and renderer modules are imported lazily by vLLM when a
Libra checkpoint is actually loaded, so other models served by the same vLLM install pay nothing.
"""

from __future__ import annotations

TOKENIZER_MODE = "libra"
ARCHITECTURES = (
    "LibraLlamaForCausalLM",
    "LibraMistralForCausalLM",
    "LibraPhi3ForCausalLM",
    "LibraGemmaForCausalLM",
    "LibraQwen2ForCausalLM",
    "LibraQwen3ForCausalLM",
)


def register() -> None:
    """Register Libra's model architectures, config types, tokenizer mode and renderer with vLLM."""
    from vllm import ModelRegistry
    from vllm.renderers.registry import RENDERER_REGISTRY
    from vllm.tokenizers.registry import TokenizerRegistry

    import libra_cli.model.modeling  # noqa: F401 - registers model_type "libra*" with AutoConfig

    for arch in ARCHITECTURES:
        if arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(arch, "libra_cli.vllm_engine.model:LibraForConditionalGeneration")
    if TOKENIZER_MODE not in TokenizerRegistry.tokenizers:
        TokenizerRegistry.register(TOKENIZER_MODE, "libra_cli.vllm_engine.tokenizer", "LibraTokenizer")
    if TOKENIZER_MODE not in RENDERER_REGISTRY.renderers:
        RENDERER_REGISTRY.register(TOKENIZER_MODE, "libra_cli.vllm_engine.renderer", "LibraRenderer")
