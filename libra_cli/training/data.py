"""Training data (docs/reference-format.md#data): training JSON + image folder, lazy image loading, label masking, collation.

Label masking: only the assistant's answer tokens and the separator that closes each answer
(``</s>`` for TWO-style templates such as ``libra_v1``) carry labels; the system text, the user
turns and the image positions are ``IGNORE_INDEX``. The prompt is tokenised exactly as at inference
(``prompts.tokenize_with_image``); which tokens belong to an answer is read from the fast
tokenizer's character offsets, so the result does not depend on how separators merge with words.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from libra_cli import prompts
from libra_cli.checkpoint import layout
from libra_cli.errors import InputError
from libra_cli.images import load_and_preprocess
from libra_cli.jsonio import read_records as read_json_records
from libra_cli.training.recipe import Recipe

IGNORE_INDEX = -100
ROLE_MAP = {"human": 0, "user": 0, "gpt": 1, "assistant": 1}


# ---------------------------------------------------------------------- reading and checking the JSON
def read_records(path: str | Path, image_folder: str | Path | None = None, check_images: bool = True) -> list[dict]:
    """Load and validate a training JSON (a list of records, or JSONL); one-line error on the first bad record."""

    p = Path(path)
    if not p.is_file():
        raise InputError(f"data file {p} not found; give the training JSON (docs/training.md#data)")
    data = read_json_records(p, "data file")
    if not data:
        raise InputError(f"data file {p}: expected a non-empty list of records with image and conversations")
    folder = Path(image_folder) if image_folder else p.parent
    for i, rec in enumerate(data):
        where = f"data file {p.name}, record {i} (id {rec.get('id', '?') if isinstance(rec, dict) else '?'})"
        if not isinstance(rec, dict):
            raise InputError(f"{where}: expected an object with image and conversations")
        conv = rec.get("conversations")
        if not isinstance(conv, list) or len(conv) < 2:
            raise InputError(f"{where}: 'conversations' must be a list of at least one human and one gpt turn")
        for j, turn in enumerate(conv):
            if not isinstance(turn, dict) or turn.get("from") not in ROLE_MAP or not isinstance(turn.get("value"), str):
                raise InputError(f"{where}: turn {j} must be {{'from': 'human'|'gpt', 'value': str}}")
            if ROLE_MAP[turn["from"]] != j % 2:
                raise InputError(f"{where}: turns must alternate human, gpt (turn {j} is {turn['from']!r})")
        images = rec.get("image")
        if images is None:
            raise InputError(f"{where}: no 'image'; give [current, prior] or [current] relative to the image folder")
        images = [images] if isinstance(images, str) else images
        if not isinstance(images, list) or not 1 <= len(images) <= 2 or not all(isinstance(x, str) for x in images):
            raise InputError(f"{where}: 'image' must be [current, prior], [current] or a path string")
        if check_images:
            for name in images:
                if name and not (folder / name).is_file():
                    raise InputError(f"{where}: image {folder / name} not found; check --set image_folder=DIR")
    return data


# ---------------------------------------------------------------------- tokenisation + masking
def conversation_text(turns: list[dict], conv_mode: str, mm_use_im_start_end: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans that carry labels (answer + closing separator)."""
    conv = prompts.get_template(conv_mode)
    conv.messages = []  # the original training code drops few-shot examples
    spans: list[tuple[int, int]] = []
    for j, turn in enumerate(turns):
        value = turn["value"]
        if j == 0:
            value = value.replace(prompts.IMAGE_TOKEN, "").strip()
            value = prompts.user_message(value, mm_use_im_start_end)
        conv.append(conv.roles[j % 2], value)
        if j % 2 == 1:
            prefix = conv.render()
            start = prefix.rfind(value)
            if start < 0:  # pragma: no cover - every template renders the message verbatim
                raise InputError(f"template {conv_mode} does not render the answer verbatim")
            spans.append((start, len(prefix)))
    full = conv.render()
    if any(e > len(full) for _, e in spans):  # pragma: no cover
        raise InputError(f"template {conv_mode} renders conversations inconsistently")
    return full, spans


def tokenize_with_offsets(text: str, tokenizer: Any) -> tuple[list[int], list[tuple[int, int]]]:
    """``prompts.tokenize_with_image`` plus each token's character span in ``text`` (image: empty span)."""
    def encode(chunk: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = tokenizer(chunk, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    pieces: list[list[tuple[int, tuple[int, int]]]] = []
    images: list[tuple[int, tuple[int, int]]] = []
    pos = 0
    for i, chunk in enumerate(text.split(prompts.IMAGE_TOKEN)):
        if i > 0:
            images.append((prompts.IMAGE_TOKEN_INDEX, (pos - len(prompts.IMAGE_TOKEN),) * 2))
        cids, coffs = encode(chunk)
        pieces.append([(t, (pos + a, pos + b) if b > a else (pos, pos)) for t, (a, b) in zip(cids, coffs, strict=True)])
        pos += len(chunk) + len(prompts.IMAGE_TOKEN)
    bos = getattr(tokenizer, "bos_token_id", None)
    joined = prompts.join_image_chunks(pieces, images, lambda item: bos is not None and item[0] == bos)
    return [t for t, _ in joined], [o for _, o in joined]


def build_example(turns: list[dict], tokenizer: Any, conv_mode: str, mm_use_im_start_end: bool = False) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for one conversation; ids hold one image placeholder (not expanded)."""
    text, spans = conversation_text(turns, conv_mode, mm_use_im_start_end)
    ids, offs = tokenize_with_offsets(text, tokenizer)
    labels = []
    for t, (a, b) in zip(ids, offs, strict=True):
        inside = t != prompts.IMAGE_TOKEN_INDEX and b > a and any(a < e and b > s for s, e in spans)
        labels.append(t if inside else IGNORE_INDEX)
    return ids, labels


# ---------------------------------------------------------------------- dataset
class LibraTrainDataset(torch.utils.data.Dataset):
    """Lazy: the JSON is read up front, images and tokens per item. A missing prior reuses the current image."""

    def __init__(self, records: list[dict], image_folder: str | Path, tokenizer: Any, image_processor: Any,
                 conv_mode: str, num_image_tokens: int, model_max_length: int, pad_images: bool = True,
                 mm_use_im_start_end: bool = False) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise InputError("training needs a fast tokenizer (tokenizer.json) for label masking")
        self.records = records
        self.image_folder = Path(image_folder)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.conv_mode = conv_mode
        self.num_image_tokens = num_image_tokens
        self.model_max_length = model_max_length
        self.pad_images = pad_images
        self.mm_use_im_start_end = mm_use_im_start_end
        self.truncated: set[int] = set()
        prompts.get_template(conv_mode)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def lengths(self) -> list[int]:
        """Approximate lengths (words + image slots) for length grouping, without touching images."""
        return [sum(len(t["value"].split()) for t in r["conversations"]) + self.num_image_tokens for r in self.records]

    def _pixels(self, name: str) -> np.ndarray:

        # read once per epoch: the per-run image cache (libra_cli.images.CACHE) would only hold memory
        return load_and_preprocess(str(self.image_folder / name), self.image_processor, pad=self.pad_images, cache=False)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        ids, labels = build_example(rec["conversations"], self.tokenizer, self.conv_mode, self.mm_use_im_start_end)
        # room left for text once the image placeholder is expanded
        budget = self.model_max_length - (self.num_image_tokens - 1) * ids.count(prompts.IMAGE_TOKEN_INDEX)
        if len(ids) > budget:
            if prompts.IMAGE_TOKEN_INDEX in ids and ids.index(prompts.IMAGE_TOKEN_INDEX) >= budget:
                raise InputError(f"record {rec.get('id', i)}: model_max_length {self.model_max_length} leaves no room "
                                 f"for the {self.num_image_tokens} image slots; raise model_max_length")
            self.truncated.add(i)
            ids, labels = ids[:budget], labels[:budget]
        images = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
        cur = self._pixels(images[0])
        dummy = len(images) < 2 or not images[1]
        prior = cur if dummy else self._pixels(images[1])
        return {"input_ids": ids, "labels": labels, "pixel_values": torch.from_numpy(np.stack([cur, prior])),
                "prior_is_dummy": dummy}


@dataclass
class LibraCollator:
    """Pads a batch (left or right), expanding each image placeholder to one slot per feature vector."""

    pad_token_id: int
    num_image_tokens: int
    padding_side: str = "right"

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [prompts.expand_image_tokens(it["input_ids"], self.num_image_tokens) for it in items]
        labels = []
        for it in items:
            lab: list[int] = []
            for t, y in zip(it["input_ids"], it["labels"], strict=True):
                lab.extend([IGNORE_INDEX] * self.num_image_tokens if t == prompts.IMAGE_TOKEN_INDEX else [y])
            labels.append(lab)
        width = max(len(x) for x in ids)
        b = len(items)
        input_ids = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        label_t = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for k, (x, y) in enumerate(zip(ids, labels, strict=True)):
            sl = slice(width - len(x), width) if self.padding_side == "left" else slice(0, len(x))
            input_ids[k, sl] = torch.tensor(x, dtype=torch.long)
            label_t[k, sl] = torch.tensor(y, dtype=torch.long)
            mask[k, sl] = 1
        return {"input_ids": input_ids, "labels": label_t, "attention_mask": mask,
                "pixel_values": torch.stack([it["pixel_values"] for it in items])}


def prepare_data(recipe: Recipe) -> tuple[list[dict], list[dict] | None]:
    """Read and check the training (and validation) JSON: errors come before any model is loaded."""
    train = read_records(recipe.data_path, recipe.image_folder)
    ev = read_records(recipe.eval_data_path, recipe.image_folder) if recipe.eval_data_path else None
    if recipe.pretrain_mm_mlp_adapter:
        layout.projector_source(recipe.pretrain_mm_mlp_adapter)
    return train, ev
