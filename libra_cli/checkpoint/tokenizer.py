"""Tokenizers: load a checkpoint's tokenizer, and the codec that encodes/decodes like the original.

The original loaded tokenizers with ``use_fast=False``. transformers 5's tokenizers differ from it
on runs of spaces and on byte-fallback decoding, which changes published numbers, so every path
that tokenises or decodes (inference, training, validation, serving) goes through
:class:`SpmCodec` when the folder has a SentencePiece model (docs/inference.md#tokenisation).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb
from transformers import AutoTokenizer

from libra_cli.errors import ModelLoadError


def load_tokenizer(folder: str | Path, **kwargs: Any) -> Any:
    """``AutoTokenizer`` for ``folder`` (never remote code), with a pad token set."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the tokenizer from {folder}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


class SpmCodec:
    """Encode and decode exactly like the original's slow Llama tokenizer (SentencePiece).

    The original loaded tokenizers with ``use_fast=False``. transformers 5's tokenizers differ
    from it on runs of spaces (``"  two"``: the fast one merges them) and on byte-fallback
    decoding (``<0x3E><0xB8>`` -> ``'>\ufffd'`` in SentencePiece, ``'\ufffd\ufffd'`` in the
    ``tokenizers`` ByteFallback decoder). Both change published numbers, so for SentencePiece
    Llama tokenizers this re-implements the slow ``LlamaTokenizer`` (legacy and non-legacy).
    """

    def __init__(self, model_file: str, tokenizer: Any, legacy: bool, add_prefix_space: bool,
                 add_bos: bool = True, add_eos: bool = False) -> None:
        self.tokenizer = tokenizer
        self.legacy = legacy
        self.add_prefix_space = add_prefix_space
        proto = Path(model_file).read_bytes()
        if not legacy:  # the slow tokenizer disables the dummy prefix and adds its own
            m = pb.ModelProto()
            m.ParseFromString(proto)
            m.normalizer_spec.add_dummy_prefix = False
            proto = m.SerializeToString()
        self.sp = spm.SentencePieceProcessor(model_proto=proto)
        self.size = self.sp.get_piece_size()
        self.special = set(tokenizer.all_special_ids)
        self.added = {t.content: i for i, t in tokenizer.added_tokens_decoder.items()}
        self.added_ids = set(self.added.values())
        self.special_tokens = set(tokenizer.all_special_tokens)
        unk = tokenizer.unk_token or "<unk>"
        self.unk = unk
        self.unk_len = len(self.sp.encode(unk, out_type=str))
        self.add_bos = add_bos
        self.add_eos = add_eos
        pattern = "|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True))
        self.split_re = re.compile(f"({pattern})") if pattern else None

    @classmethod
    def for_folder(cls, folder: str, tokenizer: Any) -> SpmCodec | None:
        f = Path(folder) / "tokenizer.model"
        cfg_file = Path(folder) / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        # the folder's declared class decides: transformers 5.0 loads a Llama folder with a tokenizer.json as the
        # generic TokenizersBackend, whose byte-fallback decoding is the one this codec exists to avoid
        declared = f"{cfg.get('tokenizer_class') or ''} {type(tokenizer).__name__}".lower()
        if not f.is_file() or "llama" not in declared:
            return None
        legacy = cfg.get("legacy")
        try:
            return cls(str(f), tokenizer, legacy is not False, bool(cfg.get("add_prefix_space", True)),
                       bool(cfg.get("add_bos_token", True)), bool(cfg.get("add_eos_token", False)))
        except Exception:  # noqa: BLE001 - not a usable SentencePiece model: keep the tokenizer's own codec
            return None

    def _tokenize(self, text: str) -> list[str]:
        if self.legacy or not text.startswith(("\u2581", " ")):
            return self.sp.encode(text, out_type=str)
        tokens = self.sp.encode(self.unk + text, out_type=str)
        return tokens[self.unk_len:] if len(tokens) >= self.unk_len else tokens

    def encode(self, text: str) -> list[int]:
        tokens: list[str] = []
        if text:
            if not self.legacy:
                text = text.replace("\u2581", " ")
                if self.add_prefix_space:
                    text = "\u2581" + text
            parts = self.split_re.split(text) if self.split_re else [text]
            for part in parts:
                if not part:
                    continue
                tokens.extend([part] if part in self.added else self._tokenize(part))
            if not self.legacy and len(tokens) > 1 and tokens[0] == "\u2581" and tokens[1] in self.special_tokens:
                tokens = tokens[1:]
        ids = [self.added[t] if t in self.added else self.sp.piece_to_id(t) for t in tokens]
        if self.add_bos and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id, *ids]
        if self.add_eos and self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def decode(self, ids: list[int]) -> str:
        out, run = "", []
        for t in ids:
            if t in self.special:
                continue
            if 0 <= t < self.size and t not in self.added_ids:
                run.append(t)
            else:  # added tokens live outside the SentencePiece vocabulary
                out += self.sp.decode(run) + (self.tokenizer.convert_ids_to_tokens(t) or "")
                run = []
        return out + self.sp.decode(run)
