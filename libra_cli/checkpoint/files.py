"""Libra's file names (no torch import: the CLI's help text uses them)."""

from __future__ import annotations

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
PROJECTOR_FILES = ("mm_projector.bin", "mm_tac_projector.bin")  # stage-1 output; the published TAC export
PROJECTOR_FILE = PROJECTOR_FILES[0]
PUBLISHED_PROJECTOR_FILE = PROJECTOR_FILES[1]
NON_LORA_FILE = "non_lora_trainables.bin"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
CONNECTOR_PREFIX = "model.mm_projector."
TOWER_PREFIX = "model.vision_tower.vision_tower."
TRAINABLES_PREFIX = "base_model.model."  # PEFT's prefix on non_lora_trainables keys
BUNDLED_TOWER_DIR = "vision_tower"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja",
                   "chat_template.json", "tokenizer.tiktoken", "qwen.tiktoken")
TOWER_FILES = ("config.json", "preprocessor_config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")
TOWER_PATTERNS = ["*.json", "*.safetensors", "*.txt"]
# what a Libra checkpoint needs from a hub repo (not optimizer states, not both weight formats)
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "merges.txt", "vocab.txt", "*.jinja",
                       *PROJECTOR_FILES, NON_LORA_FILE, "adapter_model.bin", "vision_tower/*"]
BIN_WEIGHT_PATTERNS = ["pytorch_model*.bin"]  # only when the repo has no safetensors weights
