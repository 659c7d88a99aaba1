"""The Libra model for vLLM: vLLM's own LLM (paged attention, TP) + libra's encoder and connector.

The language model is vLLM's implementation of the backbone (Llama, Mistral, Qwen2/3, Gemma,
Phi-3), initialised from the Libra config itself (the Libra configs *are* backbone configs).
The encoder and the connector are libra's own modules (``libra_cli.model.encoders.VisionTower``
loaded by ``load_vision_tower``, ``libra_cli.model.connectors.build_connector``), so image
features are computed by the same code as the transformers path. They are small and replicated
on every tensor-parallel rank.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY

from libra_cli.checkpoint.files import CONNECTOR_PREFIX, TOWER_PREFIX
from libra_cli.checkpoint.layout import connector_state
from libra_cli.checkpoint.tower import load_vision_tower
from libra_cli.model.connectors import build_connector, uses_prior
from libra_cli.model.modeling import BACKBONES
from libra_cli.vllm_engine.processing import (
    LibraDummyInputsBuilder,
    LibraMultiModalProcessor,
    LibraProcessingInfo,
    model_folder,
)

# Libra backbone (HF base model_type) -> vLLM text architecture
TEXT_ARCH = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "phi3": "Phi3ForCausalLM",
}
TOWER_KEYS = "model.vision_tower."  # the encoder as saved inside a checkpoint (normally not)


def text_architecture(config: Any) -> str:
    return TEXT_ARCH[BACKBONES[config.model_type][2]]


@MULTIMODAL_REGISTRY.register_processor(
    LibraMultiModalProcessor, info=LibraProcessingInfo, dummy_inputs=LibraDummyInputsBuilder
)
class LibraForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsPP):
    """Every Libra architecture (``LibraLlamaForCausalLM`` ...) maps to this class."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        # The current image is the study's one <image> marker; the prior (second image part of
        # the message) has no marker of its own: it is paired with the current in the processor.
        if modality.startswith("image"):
            return "<image>" if i == 1 else None
        raise ValueError("Libra takes images only")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        # the <image> placeholder id is past the vocabulary: masked before the embedding lookup
        self.configure_mm_token_handling(vocab_size=config.vocab_size, mm_token_ids=[config.vocab_size])
        dtype = vllm_config.model_config.dtype
        device = vllm_config.device_config.device
        with self._mark_tower_model(vllm_config, "image"):
            self.vision_tower = load_vision_tower(config, checkpoint_dir=model_folder(vllm_config.model_config.model),
                                                  dtype=dtype, device=device)
            self.mm_projector = build_connector(config).to(dtype)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=config, architectures=[text_architecture(config)],
                prefix=maybe_prefix(prefix, "language_model"))
        self.uses_prior = uses_prior(config)
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    # ------------------------------------------------------------------ images
    def embed_multimodal(self, **kwargs: object) -> list[torch.Tensor]:
        """``pixel_values`` ``[N, 2, 3, H, W]`` (current, prior) -> N studies of ``[P, H]`` features.

        The same steps as ``LibraMixin.get_image_features`` on the same modules.
        """
        pixel_values = kwargs.get("pixel_values")
        if pixel_values is None:
            return []
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.stack(list(pixel_values))
        cur = self.vision_tower(pixel_values[:, 0])
        prior = self.vision_tower(pixel_values[:, 1]) if self.uses_prior else None
        dtype = next(self.mm_projector.parameters()).dtype
        feats = self.mm_projector(cur.to(dtype), prior.to(dtype) if prior is not None else None)
        return list(feats)

    # ------------------------------------------------------------------ LLM
    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, intermediate_tensors: Any = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: object) -> Any:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Checkpoint keys in the original layout: LLM keys as the backbone's, then the connector's.

        The encoder was loaded from its own folder in ``__init__`` (as the original: not saved in
        the checkpoint), unless the checkpoint carries a trained one (``unfreeze_mm_vision_tower``).
        """
        connector: dict[str, torch.Tensor] = {}
        tower: dict[str, torch.Tensor] = {}

        def text_weights() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if name.startswith(CONNECTOR_PREFIX):
                    connector[name] = tensor
                elif name.startswith(TOWER_PREFIX):
                    tower[name[len(TOWER_PREFIX):]] = tensor
                elif not name.startswith(TOWER_KEYS):
                    yield name, tensor

        loaded = {f"language_model.{n}" for n in self.language_model.load_weights(text_weights())}
        self.mm_projector.load_state_dict(connector_state(connector), strict=True)
        if tower and getattr(self.config, "unfreeze_mm_vision_tower", False):
            self.vision_tower.vision_tower.load_state_dict(tower)
        loaded |= {f"mm_projector.{k}" for k in self.mm_projector.state_dict()}
        loaded |= {f"vision_tower.{k}" for k, _ in self.vision_tower.named_parameters()}
        return loaded
