"""vLLM tokenizer (``tokenizer_mode="libra"``) that encodes and decodes exactly as ``libra infer``.

vLLM would otherwise load the transformers 5 *fast* tokenizer, which differs from the slow
SentencePiece tokenizer the original used (runs of spaces, byte-fallback decoding; see
DEVELOPERS.md "Tokenisation"). This wrapper keeps the HF tokenizer for everything vLLM asks of
it, but encodes with ``SpmCodec`` around ``<image>`` exactly like ``prompts.tokenize_with_image``
and decodes with the same codec, so prompt ids and reply text equal the transformers path.

The image marker becomes ``placeholder_id``: one id past both the tokenizer and the model
vocabulary, so no text can ever produce it (the original used -200, which vLLM rejects); the
model masks it before the embedding lookup and scatters the image features over it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import BatchEncoding

from libra_cli.checkpoint.hub import hub_folder
from libra_cli.checkpoint.tokenizer import SpmCodec, load_tokenizer
from libra_cli.prompts import IMAGE_TOKEN, tokenize_with_image


def _model_vocab_size(folder: Path) -> int:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return 0
    data = json.loads(cfg.read_text())
    return int(data.get("vocab_size") or data.get("text_config", {}).get("vocab_size") or 0)


class LibraTokenizer:
    """A vLLM ``TokenizerLike`` over the HF tokenizer with libra's exact codec."""

    def __init__(self, hf: Any, codec: Any, placeholder_id: int, name_or_path: str) -> None:
        self.hf = hf
        self.codec = codec
        self.placeholder_id = placeholder_id
        self.name_or_path = name_or_path
        self._vocab: dict[str, int] | None = None
        self._special_ids = list(hf.all_special_ids)
        self._special_tokens = list(hf.all_special_tokens)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | Path, *args: Any, trust_remote_code: bool = False,
                        revision: str | None = None, download_dir: str | None = None, **kwargs: Any) -> LibraTokenizer:
        """Load the checkpoint's tokenizer and libra's codec for it (what ``load_model`` does)."""
        folder = Path(hub_folder(str(path_or_repo_id), what="tokenizer"))
        hf = load_tokenizer(folder, revision=revision, cache_dir=download_dir)
        codec = SpmCodec.for_folder(str(folder), hf)
        placeholder = max(len(hf), _model_vocab_size(folder))
        return cls(hf, codec, placeholder, str(folder))

    # ------------------------------------------------------------------ encode
    def _encode_text(self, text: str) -> list[int]:
        if self.codec is not None:
            return self.codec.encode(text)
        return list(self.hf(text).input_ids)

    def encode_study(self, text: str) -> list[int]:
        """A study prompt: ``<image>`` -> ``placeholder_id``, the rest exactly as ``libra infer`` tokenises it."""
        return tokenize_with_image(text, self.hf, image_token_index=self.placeholder_id, encode=self._encode_text)

    def encode(self, text: str, truncation: bool | None = None, max_length: int | None = None,
               add_special_tokens: bool = True) -> list[int]:
        """Plain text (an ``<image>`` typed without an image stays text), as the original tokenizer."""
        ids = self._encode_text(text)
        if not add_special_tokens and ids and ids[0] == self.hf.bos_token_id:
            ids = ids[1:]
        if truncation and max_length is not None and len(ids) > max_length:
            ids = ids[-max_length:] if self.truncation_side == "left" else ids[:max_length]
        return ids

    def __call__(self, text: str | list[str], text_pair: str | None = None, add_special_tokens: bool = True,
                 truncation: bool = False, max_length: int | None = None, **kwargs: Any) -> Any:
        if isinstance(text, list):
            ids: Any = [self.encode(t, truncation, max_length, add_special_tokens) for t in text]
            mask: Any = [[1] * len(i) for i in ids]
        else:
            ids = self.encode(text, truncation, max_length, add_special_tokens)
            mask = [1] * len(ids)
        return BatchEncoding({"input_ids": ids, "attention_mask": mask})

    # ------------------------------------------------------------------ decode
    def _ids_for_tokens(self, tokens: Sequence[str]) -> list[int]:
        vocab = self.get_vocab()
        return [vocab.get(t, self.hf.unk_token_id or 0) for t in tokens if t != IMAGE_TOKEN]

    def decode(self, ids: Sequence[int] | int, skip_special_tokens: bool = False) -> str:
        """libra's decode (slow-SentencePiece semantics, special tokens left out)."""
        ids = [ids] if isinstance(ids, int) else [i for i in ids if i != self.placeholder_id]
        if self.codec is not None:
            return self.codec.decode(ids)
        return self.hf.decode(ids, skip_special_tokens=True)

    def batch_decode(self, seqs: Sequence[Sequence[int]], skip_special_tokens: bool = False, **kw: Any) -> list[str]:
        return [self.decode(s, skip_special_tokens) for s in seqs]

    def convert_ids_to_tokens(self, ids: Sequence[int] | int, skip_special_tokens: bool = False) -> Any:
        single = isinstance(ids, int)
        seq = [ids] if single else list(ids)
        out: list[str] = []
        for i in seq:
            if i == self.placeholder_id:
                out.append(IMAGE_TOKEN)
            elif skip_special_tokens and i in self._special_ids:
                continue
            else:
                out.append(self.hf.convert_ids_to_tokens(int(i)) or "")
        return out[0] if single and out else out

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> Any:
        if isinstance(tokens, str):
            return self.placeholder_id if tokens == IMAGE_TOKEN else self.hf.convert_tokens_to_ids(tokens)
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Pieces -> text through the same codec (vLLM's incremental detokenizer calls this)."""
        return self.decode(self._ids_for_tokens(tokens))

    # ------------------------------------------------------------------ vocabulary facts
    def get_vocab(self) -> dict[str, int]:
        if self._vocab is None:
            self._vocab = dict(self.hf.get_vocab())
        return self._vocab

    def get_added_vocab(self) -> dict[str, int]:
        # Empty on purpose: vLLM then detokenizes whole windows with convert_tokens_to_string
        # (our exact codec) instead of splicing added tokens with spaces of its own.
        return {}

    def num_special_tokens_to_add(self) -> int:
        return 1 if self.hf.bos_token_id is not None else 0

    @property
    def all_special_tokens(self) -> list[str]:
        return self._special_tokens

    @property
    def all_special_ids(self) -> list[int]:
        return self._special_ids

    @property
    def bos_token_id(self) -> int:
        return self.hf.bos_token_id

    @property
    def eos_token_id(self) -> int:
        return self.hf.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.hf.pad_token_id

    @property
    def is_fast(self) -> bool:
        return False

    @property
    def vocab_size(self) -> int:
        return self.placeholder_id + 1

    @property
    def max_token_id(self) -> int:
        return self.placeholder_id

    @property
    def max_chars_per_token(self) -> int:
        return max(len(t) for t in self.get_vocab())

    @property
    def truncation_side(self) -> str:
        return getattr(self.hf, "truncation_side", "left")

    def __len__(self) -> int:
        return self.placeholder_id + 1

    def __hash__(self) -> int:
        return hash(id(self))

    def apply_chat_template(self, messages: list[Any], tools: Any = None, **kwargs: Any) -> Any:
        """Chat rendering lives in :class:`libra_cli.vllm_engine.renderer.LibraRenderer` (libra's templates)."""
        raise NotImplementedError("Libra chats are rendered by LibraRenderer with libra's conversation templates")

    def __getattr__(self, name: str) -> Any:
        # anything else (eos_token, special_tokens_map, ...) is the HF tokenizer's
        if name == "hf":
            raise AttributeError(name)
        return getattr(self.hf, name)
