"""Conversation templates and prompt tokenisation (docs/reference-format.md#prompts).

Templates are data (``resources/conv_templates.json``, every mode of the original code).
Rendering follows the original separator styles; the single-turn rendering of every template is
tested against the ``rendered_single_turn`` recorded from the original code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from libra_cli.errors import InputError

IMAGE_TOKEN = "<image>"
IM_START, IM_END = "<im_start>", "<im_end>"
IMAGE_TOKEN_INDEX = -200
DEFAULT_QUERY = "Provide a detailed description of the findings in the radiology image."
CONTEXT_PREFIX = "Following clinical context: "


@lru_cache(maxsize=1)
def _templates() -> dict[str, dict[str, Any]]:
    from importlib import resources  # on first use: `libra --help` reads no template

    text = resources.files("libra_cli").joinpath("resources/conv_templates.json").read_text(encoding="utf-8")
    return json.loads(text)


def template_names() -> list[str]:
    """Every conversation mode known to the original code."""
    return sorted(_templates())


@dataclass
class Conversation:
    """A conversation in one template; ``messages`` are ``[role, text-or-None]`` pairs."""

    name: str
    system: str
    roles: tuple[str, str]
    style: str
    sep: str
    sep2: str | None
    messages: list[list[Any]] = field(default_factory=list)
    stop_string: str = ""

    def copy(self) -> Conversation:
        return Conversation(self.name, self.system, self.roles, self.style, self.sep, self.sep2,
                            [list(m) for m in self.messages], self.stop_string)

    def append(self, role: str, message: str | None) -> None:
        self.messages.append([role, message])

    def render(self) -> str:
        """The prompt text, rendered as the original ``Conversation.get_prompt``."""
        style, sep, sep2, system = self.style, self.sep, self.sep2, self.system
        msgs = self.messages
        if style == "SINGLE":
            ret = system + sep
            for role, msg in msgs:
                ret += f"{role}: {msg}{sep}" if msg else f"{role}:"
            return ret
        if style == "TWO":
            seps = [sep, sep2 or ""]
            ret = system + seps[0]
            for i, (role, msg) in enumerate(msgs):
                ret += f"{role}: {msg}{seps[i % 2]}" if msg else f"{role}:"
            return ret
        if style in ("MPT", "PHI3", "GEMMA"):
            ret = system + sep
            for role, msg in msgs:
                ret += f"{role}{msg}{sep}" if msg else role
            return ret
        if style == "QWEN":
            ret = system + sep
            for role, msg in msgs:
                ret += f"\n{role}\n{msg}{sep}" if msg else f"\n{role}"
            return ret
        if style == "PLAIN":
            seps = [sep, sep2 or ""]
            ret = system
            for i, (_, msg) in enumerate(msgs):
                if msg:
                    ret += msg + seps[i % 2]
            return ret
        if style in ("LLAMA_2", "MISTRAL"):
            ret = ""
            for i, (_, msg) in enumerate(msgs):
                if not msg:
                    continue
                if i == 0 and system:
                    msg = f"<<SYS>>\n{system}\n<</SYS>>\n\n{msg}"
                if i % 2 == 0:
                    ret += f"{sep}[INST] {msg} [/INST]"
                else:
                    ret += f" {msg} {sep2}"
            return ret[len(sep):] if sep and ret.startswith(sep) else ret
        if style == "LLAMA_3":
            ret = sep
            if system:
                ret += f"<|start_header_id|>system<|end_header_id|>\n\n{system}{sep2}"
            for i, (role, msg) in enumerate(msgs):
                if i % 2 == 0:
                    ret += f"<|start_header_id|>user<|end_header_id|>\n\n{msg}{sep2}"
                elif msg:
                    ret += f"\n<|start_header_id|>{role}<|end_header_id|>\n\n{msg}{sep2}"
                else:
                    ret += f"\n<|start_header_id|>{role}<|end_header_id|>"
            return ret
        raise InputError(f"template {self.name!r} has an unknown separator style {style!r}")


def get_template(name: str) -> Conversation:
    """A fresh conversation in template ``name`` (with its few-shot messages)."""
    t = _templates().get(name)
    if t is None:
        import difflib

        close = difflib.get_close_matches(name, _templates(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"unknown --conv-mode {name!r}{hint}; choose one of: {', '.join(template_names())}")
    conv = Conversation(
        name=name,
        system=t["system"],
        roles=tuple(t["roles"]),
        style=t["style"],
        sep=t["sep"],
        sep2=t["sep2"],
        messages=[list(m) for m in t["few_shot_messages"]],
        stop_string=t["stop_string"],
    )
    return conv


def user_message(query: str, mm_use_im_start_end: bool = False, context: str | None = None) -> str:
    """The first user turn: image marker, newline, query (+ clinical context as in the original data)."""
    if context:
        query = f"{query.rstrip()} {CONTEXT_PREFIX}{context.strip()}"
    marker = f"{IM_START}{IMAGE_TOKEN}{IM_END}" if mm_use_im_start_end else IMAGE_TOKEN
    if IMAGE_TOKEN in query:
        return query
    return f"{marker}\n{query}"


def build_prompt(
    query: str = DEFAULT_QUERY,
    conv_mode: str = "libra_v1",
    mm_use_im_start_end: bool = False,
    context: str | None = None,
    history: list[tuple[str, str]] | None = None,
    guide: str | None = None,
) -> tuple[str, str]:
    """Render a single-turn (or follow-up) prompt with the assistant turn left open.

    Returns ``(prompt_text, stop_string)``. ``history`` holds earlier (question, answer) pairs;
    the image marker goes into the first question only. ``guide`` (CCD's clinical guidance) is
    appended to the last question after one space, as the CCD reference does.
    """
    conv = get_template(conv_mode)
    turns = list(history or []) + [(query, None)]
    for i, (q, a) in enumerate(turns):
        text = user_message(q, mm_use_im_start_end, context if i == 0 else None) if i == 0 else q
        if guide is not None and i == len(turns) - 1:
            text = f"{text} {guide}"
        conv.append(conv.roles[0], text)
        conv.append(conv.roles[1], a)
    return conv.render(), conv.stop_string


def tokenize_with_image(prompt: str, tokenizer: Any, image_token_index: int = IMAGE_TOKEN_INDEX,
                        encode: Any = None) -> list[int]:
    """Tokenise around ``<image>`` exactly as the original ``tokenizer_image_token``.

    Every chunk is tokenised with the tokenizer's BOS; if the first chunk starts with BOS, it is
    kept once and the first token of every later chunk is dropped. ``encode`` (text -> ids with
    BOS) overrides the tokenizer: pass ``LoadedModel.encode`` for the original's slow-tokenizer ids.
    """
    enc = encode or (lambda text: list(tokenizer(text).input_ids))
    chunks = [enc(chunk) for chunk in prompt.split(IMAGE_TOKEN)]
    bos = getattr(tokenizer, "bos_token_id", None)
    return join_image_chunks(chunks, [image_token_index] * (len(chunks) - 1), lambda t: bos is not None and t == bos)


def join_image_chunks(chunks: list[list[Any]], separators: list[Any], is_bos: Any) -> list[Any]:
    """Join per-chunk tokens around the image placeholders as the original did.

    If the first chunk starts with BOS, it is kept once and the first item of *every* chunk is
    dropped (the original's ``offset``); ``separators[i]`` goes between chunks ``i`` and ``i + 1``.
    Items are ids, or (id, span) pairs for label masking: one join for inference and training.
    """
    out: list[Any] = []
    offset = 0
    if chunks and chunks[0] and is_bos(chunks[0][0]):
        offset = 1
        out.append(chunks[0][0])
    for i, chunk in enumerate(chunks):
        if i > 0:
            out.append(separators[i - 1])
        out.extend(chunk[offset:])
    return out


def expand_image_tokens(ids: list[int], num_patches: int, image_token_index: int = IMAGE_TOKEN_INDEX) -> list[int]:
    """Repeat each image placeholder ``num_patches`` times (one slot per image-feature vector)."""
    out: list[int] = []
    for t in ids:
        if t == image_token_index:
            out.extend([image_token_index] * num_patches)
        else:
            out.append(t)
    return out


def strip_stop(text: str, stop: str | None) -> str:
    """Strip the answer and drop a trailing stop string (the original post-processing)."""
    text = text.strip()
    if stop and text.endswith(stop):
        text = text[: -len(stop)]
    return text.strip()
