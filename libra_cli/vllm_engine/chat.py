"""Chat messages -> libra's prompt text (no vLLM import: unit-tested in the default suite).

The OpenAI chat format carries a study as one user message: image parts (current, then prior)
and the question as text. vLLM's chat parser turns the parts into ``"<image>\n" + text`` (one
marker: the plugin gives the prior no marker of its own), which is exactly libra's first user
turn, so rendering the turns with libra's own template gives the prompt ``libra infer`` builds.
"""

from __future__ import annotations

from typing import Any

from libra_cli.checkpoint.registry import default_conv_mode, default_query
from libra_cli.prompts import IM_END, IM_START, IMAGE_TOKEN, get_template


def conv_mode_for(model_config: Any) -> str:
    """The template the model was trained with (``libra_conv_mode`` in the config overrides it)."""
    hf_config = model_config.hf_config
    return str(getattr(hf_config, "libra_conv_mode", None) or default_conv_mode(str(model_config.model), hf_config))


def default_query_for(model_config: Any) -> str:
    """The question the model was trained to answer (``libra_default_query`` in the config overrides it)."""
    saved = getattr(model_config.hf_config, "libra_default_query", None)
    return str(saved) if saved else default_query(str(model_config.model))


def render_conversation(conversation: list[Any], conv_mode: str, default_query: str,
                        mm_use_im_start_end: bool = False) -> str:
    """Messages (``role``/``content`` strings) -> prompt text in libra's template, assistant turn open."""
    conv = get_template(conv_mode)
    first_user = True
    for message in conversation:
        role, content = message["role"], message.get("content") or ""
        if role in ("system", "developer"):
            conv.system = content
            continue
        if role == "user":
            if first_user and content.strip() == IMAGE_TOKEN:
                content = f"{IMAGE_TOKEN}\n{default_query}"  # images only: the model's findings query
            if first_user and mm_use_im_start_end:
                content = content.replace(IMAGE_TOKEN, f"{IM_START}{IMAGE_TOKEN}{IM_END}", 1)
            first_user = False
            conv.append(conv.roles[0], content)
        else:
            conv.append(conv.roles[1], content)
    conv.append(conv.roles[1], None)
    return conv.render()
