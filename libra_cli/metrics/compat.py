"""Transformers-4 tokenizer calls that the field's scorer packages still make, on transformers 5.

radgraph 0.1.18 and f1chexbert 0.0.2 call ``tokenizer.encode_plus``, which transformers 5 removed.
``with_encode_plus`` gives one tokenizer object (not the class, not globally) the transformers-4
behaviour back: a list of strings is a list of *tokens* (the slow tokenizers' ``get_input_ids``:
``convert_tokens_to_ids``, then ``[CLS] ... [SEP]``), anything else goes to ``__call__``, which is
what ``encode_plus`` delegated to.
"""

from __future__ import annotations

from typing import Any


def _encode_plus(self: Any, text: Any, text_pair: Any = None, add_special_tokens: bool = True, **kwargs: Any) -> Any:
    tokens_given = isinstance(text, (list, tuple)) and len(text) > 0 and isinstance(text[0], str)
    if tokens_given and text_pair is None and not kwargs.get("is_split_into_words", False):
        ids = self.convert_tokens_to_ids(list(text))
        if add_special_tokens:
            ids = [self.cls_token_id, *ids, self.sep_token_id]
        return {"input_ids": ids}
    return self(text, text_pair, add_special_tokens=add_special_tokens, **kwargs)


def _build_inputs_with_special_tokens(self: Any, ids: list[int], ids_pair: list[int] | None = None) -> list[int]:
    """BERT/RoBERTa single-sequence form of transformers 4: ``[CLS] ids [SEP]`` (``<s> ids </s>``)."""
    if ids_pair is not None:
        raise NotImplementedError("pairs are not used by the scorer packages")
    return [self.cls_token_id, *ids, self.sep_token_id]


_METHODS = {"encode_plus": _encode_plus, "build_inputs_with_special_tokens": _build_inputs_with_special_tokens}


def _has(obj: Any, name: str) -> bool:
    try:
        getattr(obj, name)
        return True
    except AttributeError:  # transformers 5 tokenizers raise from __getattr__
        return False


def with_encode_plus(tokenizer: Any) -> Any:
    """Return ``tokenizer`` with transformers-4 ``encode_plus`` / ``build_inputs_with_special_tokens``
    (each only where missing); the object's class is swapped for a subclass, nothing global changes."""
    missing = {k: v for k, v in _METHODS.items() if not _has(tokenizer, k)}
    if not missing:
        return tokenizer
    base = type(tokenizer)
    tokenizer.__class__ = type(base.__name__, (base,), missing)
    return tokenizer


def _encode_with_prefix_space(self: Any, text: Any, *args: Any, add_prefix_space: bool = False, **kwargs: Any) -> Any:
    # transformers 4's slow RoBERTa/GPT-2 ``prepare_for_tokenization``: prefix one space unless one is there
    if add_prefix_space and isinstance(text, str) and len(text) > 0 and not text[0].isspace():
        text = " " + text
    return super(type(self), self).encode(text, *args, **kwargs)


def with_add_prefix_space(tokenizer: Any) -> Any:
    """transformers 5 byte-level BPE tokenizers ignore ``encode(..., add_prefix_space=True)`` (bert-score
    passes it for RoBERTa); give this object the transformers-4 meaning of the argument."""
    if getattr(tokenizer, "_libra_prefix_space", False):
        return tokenizer
    base = type(tokenizer)
    tokenizer.__class__ = type(base.__name__, (base,), {"encode": _encode_with_prefix_space, "_libra_prefix_space": True})
    return tokenizer
