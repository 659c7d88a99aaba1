"""Registry of published Libra checkpoints: which template each needs, and what users must know."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from libra_cli.console import warn_once
from libra_cli.prompts import DEFAULT_QUERY, get_template

MAIRA_QUERY = (
    "Provide a description of the findings in the radiology study in comparison to the prior frontal image. "
    "INDICATION: None. TECHNIQUE: None. COMPARISON: None."
)


@dataclass(frozen=True)
class KnownModel:
    hub_id: str
    conv_mode: str
    backbone: str
    encoder: str
    connector: str
    default_query: str = DEFAULT_QUERY
    note: str = ""


KNOWN_MODELS: dict[str, KnownModel] = {
    m.hub_id.lower(): m
    for m in [
        KnownModel("X-iZhang/libra-v1.0-7b", "libra_v1", "Meditron-7B", "RAD-DINO", "TAC"),
        KnownModel("X-iZhang/libra-v1.0-3b", "libra_llama_3", "Llama-3.2-3B-Instruct", "RAD-DINO", "TAC"),
        KnownModel("X-iZhang/Med-CXRGen-F", "libra_v0", "Vicuna-7B", "CLIP-L-336px", "mlp2x_gelu",
                   note="findings-section model (Libra-0.5)"),
        KnownModel("X-iZhang/Med-CXRGen-I", "libra_v0", "Vicuna-7B", "CLIP-L-336px", "mlp2x_gelu",
                   default_query="Provide a concise impression of the radiology image.",
                   note="impression-section model (Libra-0.5)"),
        KnownModel("X-iZhang/libra-llava-med-v1.5-mistral-7b", "llava_med_v1.5_mistral_7b", "Mistral-7B-Instruct-v0.2",
                   "CLIP-L-336px", "mlp2x_gelu", note="LLaVA-Med v1.5 weights in Libra layout"),
        KnownModel("X-iZhang/libra-llava-rad", "v1", "Vicuna-7B", "BiomedCLIP", "mlp2x_gelu",
                   note="LLaVA-Rad weights in Libra layout; BiomedCLIP needs the [openclip] extra"),
        KnownModel("X-iZhang/libra-maira-2", "maira_2", "Vicuna-7B", "RAD-DINO", "mlp4x_gelu",
                   default_query=MAIRA_QUERY,
                   note="MAIRA-2 needs its fixed prompt with INDICATION/TECHNIQUE/COMPARISON placeholders; "
                        "it uses the current frontal image only"),
    ]
}

# fallback template per backbone model_type for local folders not in the registry
BACKBONE_CONV_MODE = {
    "libra": "libra_v1",
    "libra_mistral": "llava_med_v1.5_mistral_7b",
    "libra_phi3": "conv_phi3",
    "libra_gemma": "conv_gemma",
    "libra_qwen2": "qwen",
    "libra_qwen3": "qwen",
}


def lookup(model: str) -> KnownModel | None:
    """The registry entry for a hub id (case-insensitive), or ``None``."""
    return KNOWN_MODELS.get(model.strip().rstrip("/").lower())


def default_query(model: str) -> str:
    """The question ``model`` was trained to answer (the registry's, else the findings query)."""
    known = lookup(model)
    return known.default_query if known else DEFAULT_QUERY


def conv_mode_for(model: str, config: Any, conv_mode: str | None = None) -> str:
    """The prompt template to run ``model`` with: the one it was trained with, or the user's (validated, and
    warned about when it differs). Every engine asks here."""
    chosen = default_conv_mode(model, config)
    if conv_mode and conv_mode != chosen:
        get_template(conv_mode)  # validates the name
        warn_once(f"conv:{model}:{conv_mode}",
                  f"--conv-mode {conv_mode} differs from {chosen!r}, the template {model} was trained with")
    conv = conv_mode or chosen
    get_template(conv)
    return conv


def default_conv_mode(model: str, config: object) -> str:
    """Template for a model: registry, then ``libra_conv_mode`` in its config, then the backbone default."""
    known = lookup(model)
    if known:
        return known.conv_mode
    saved = getattr(config, "libra_conv_mode", None)
    if saved:
        return str(saved)
    model_type = getattr(config, "model_type", "libra")
    if model_type == "libra" and int(getattr(config, "vocab_size", 0) or 0) >= 128000:
        return "libra_llama_3"  # Llama-3 vocabulary
    return BACKBONE_CONV_MODE.get(model_type, "libra_v1")
