"""vLLM multimodal processing for Libra: a study (current + prior X-ray) is ONE multimodal item.

vLLM's processor pipeline assumes one prompt placeholder per image. Libra fuses the current and
the prior image into one sequence of ``P`` feature vectors (the TAC compares them), so the two
images of a chat message (or of a batch sample) become one item here: ``apply`` is overridden to
pair them (a missing prior is the current image, as ``libra infer`` does), preprocess both with
libra's own PIL pipeline (:mod:`libra_cli.images`, so pixels are identical), and expand the
single ``<image>`` placeholder id to ``P`` slots exactly where ``prompts.expand_image_tokens``
puts them. The item's cache key hashes both images, so prefix/encoder caching never mixes up
two studies that share a current or a prior image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, BatchFeature
from vllm.inputs import mm_input
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems, PlaceholderRange
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
)
from vllm.multimodal.processing.inputs import ProcessorInputs

from libra_cli.checkpoint.hub import hub_folder
from libra_cli.checkpoint.tower import resolve_vision_tower_path, tower_folder, tower_name
from libra_cli.errors import InputError
from libra_cli.images import ImageProcessorConfig, to_pixels

MAX_IMAGES = 2  # current + prior


@dataclass(frozen=True)
class TowerGeometry:
    """What the processor needs to know about the encoder without loading its weights."""

    processor: ImageProcessorConfig
    num_tokens: int  # feature vectors per study = placeholder slots in the prompt
    pad: bool  # image_aspect_ratio == "pad": pad to square first (the original expand2square)


def model_folder(name: str) -> str:
    return hub_folder(name, what="model")


def tower_geometry(config: Any, folder: str) -> TowerGeometry:
    """Image preprocessing and token count of the encoder named by the Libra config."""
    name = tower_name(config)
    path = resolve_vision_tower_path(name, folder)
    if path.startswith("hf-hub:"):
        raise InputError(f"the vLLM engine does not run open_clip towers ({name}); use --engine hf")
    tower = tower_folder(path)
    vcfg = AutoConfig.from_pretrained(tower, trust_remote_code=False)
    vcfg = getattr(vcfg, "vision_config", vcfg)
    n = (int(vcfg.image_size) // int(vcfg.patch_size)) ** 2
    has_cls = getattr(vcfg, "model_type", "") not in ("siglip_vision_model", "siglip", "siglip2_vision_model")
    if (getattr(config, "mm_vision_select_feature", "patch") or "patch") == "cls_patch" and has_cls:
        n += 1
    pad = getattr(config, "image_aspect_ratio", "pad") == "pad"
    return TowerGeometry(ImageProcessorConfig.from_pretrained(tower), n, pad)


def pixels(item: Any, geometry: TowerGeometry) -> np.ndarray:
    """One image as libra preprocesses it: float32 ``[3, H, W]``.

    Preprocessed arrays (what ``libra batch`` sends) pass through; images that came over HTTP are
    decoded again from their original bytes with ``libra_cli.images`` (16-bit PNGs min-max
    scaled, no EXIF rotation), since vLLM's own decoding differs from the original pipeline.
    """
    raw = getattr(item, "original_bytes", None)
    if raw is not None:
        item = raw
    elif hasattr(item, "media"):
        item = item.media
    return to_pixels(item, geometry.processor, pad=geometry.pad)


class LibraProcessingInfo(BaseProcessingInfo):
    """Limits and sizes: up to two images (current, prior) make one study of ``P`` tokens."""

    @cached_property
    def geometry(self) -> TowerGeometry:
        return tower_geometry(self.get_hf_config(), model_folder(self.ctx.model_config.model))

    @property
    def placeholder_id(self) -> int:
        return int(self.get_tokenizer().placeholder_id)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": MAX_IMAGES}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.geometry.num_tokens}

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {}


class LibraDummyInputsBuilder(BaseDummyInputsBuilder[LibraProcessingInfo]):
    """Profiling input: one study at the encoder's resolution."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return "<image>"

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any = None) -> Any:
        h, w = self.info.geometry.processor.output_size
        return {"image": self._get_dummy_images(width=w, height=h, num_images=1)}


class LibraMultiModalProcessor(BaseMultiModalProcessor[LibraProcessingInfo]):
    """Pairs current and prior into one item and expands the one placeholder to ``P`` slots."""

    def get_dummy_inputs(self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any) -> ProcessorInputs:
        data = self.dummy_inputs.get_dummy_mm_data(seq_len, mm_counts, mm_options)
        items = self.info.parse_mm_data(data, validate=False)
        bos = self.info.get_tokenizer().bos_token_id
        return ProcessorInputs(prompt=[bos, self.info.placeholder_id], mm_data_items=items)

    def _get_mm_fields_config(self, hf_inputs: Any, hf_processor_mm_kwargs: Mapping[str, object]) -> Any:
        return {"pixel_values": MultiModalFieldConfig.batched("image")}

    def _get_prompt_updates(self, mm_items: Any, hf_processor_mm_kwargs: Any, out_mm_kwargs: Any) -> Any:
        ph = self.info.placeholder_id
        return [PromptReplacement(modality="image", target=[ph], replacement=[ph] * self.info.geometry.num_tokens)]

    def apply(self, inputs: ProcessorInputs, timing_ctx: Any) -> Any:
        """One study -> pixel_values ``[1, 2, 3, H, W]``, one hash, one placeholder range."""
        items = inputs.mm_data_items.get("image")
        count = len(items) if items is not None else 0
        if not 1 <= count <= MAX_IMAGES:
            raise ValueError(f"a Libra study takes 1 or 2 images (current, prior), got {count}")
        geometry = self.info.geometry
        cur = pixels(items.data[0], geometry)
        prior = pixels(items.data[1], geometry) if count == 2 else cur
        pixel_values = torch.from_numpy(np.stack([cur, prior]))[None]
        kwargs = MultiModalKwargsItems.from_hf_inputs(
            BatchFeature({"pixel_values": pixel_values}), self._get_mm_fields_config(None, {}))
        prompt, offset = self._expand(list(inputs.prompt))
        return mm_input(
            prompt_token_ids=prompt,
            mm_kwargs=kwargs,
            mm_hashes={"image": [self._study_hash(inputs, count)]},
            mm_placeholders={"image": [PlaceholderRange(offset=offset, length=geometry.num_tokens)]},
        )

    def _expand(self, prompt: list[int]) -> tuple[list[int], int]:
        ph = self.info.placeholder_id
        where = [i for i, t in enumerate(prompt) if t == ph]
        if len(where) != 1:
            raise ValueError(f"the prompt must hold exactly one <image> marker for the study, found {len(where)}")
        i = where[0]
        return prompt[:i] + [ph] * self.info.geometry.num_tokens + prompt[i + 1:], i

    def _study_hash(self, inputs: ProcessorInputs, count: int) -> str:
        hashes = inputs.get_mm_hashes(self.info.model_id, self.info.ctx.get_mm_config().mm_hasher_algorithm)["image"]
        joined = "|".join(hashes) + ("" if count == 2 else "|dummy-prior")
        return hashlib.sha256(joined.encode()).hexdigest()
