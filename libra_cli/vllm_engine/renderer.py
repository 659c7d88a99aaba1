"""vLLM renderer (``tokenizer_mode="libra"``): chat messages -> the prompt ``libra infer`` builds.

vLLM renders chats with a Jinja template; Libra's prompts come from the original conversation
templates (``libra_cli.prompts``: separators, few-shot turns, stop strings), which a Jinja copy
would only approximate. This renderer takes vLLM's parsed messages (the image parts already
turned into one ``<image>`` marker in front of the text, as libra's first user turn has it) and
renders them with libra's own template for the model, then tokenises with libra's codec.
"""

from __future__ import annotations

from typing import Any

from vllm.renderers.chat_utils import parse_chat_messages, parse_chat_messages_async
from vllm.renderers.hf import HfRenderer

from libra_cli.vllm_engine.chat import conv_mode_for, default_query_for, render_conversation


class LibraRenderer(HfRenderer):
    """HfRenderer whose chat step is libra's template + codec instead of a Jinja chat template."""

    def _prompt(self, conversation: list[Any], with_images: bool) -> dict[str, Any]:
        hf_config = self.model_config.hf_config
        text = render_conversation(conversation, conv_mode_for(self.model_config), default_query_for(self.model_config),
                                   bool(getattr(hf_config, "mm_use_im_start_end", False)))
        tok = self.get_tokenizer()
        return {"prompt_token_ids": tok.encode_study(text) if with_images else tok.encode(text), "prompt": text}

    def _finish(self, conversation: list[Any], mm_data: Any, mm_uuids: Any) -> tuple[list[Any], Any]:
        prompt = self._prompt(conversation, bool(mm_data))
        if mm_data is not None:
            prompt["multi_modal_data"] = mm_data
        if mm_uuids is not None:
            prompt["multi_modal_uuids"] = mm_uuids
        return conversation, prompt

    def render_messages(self, messages: list[Any], params: Any) -> tuple[list[Any], Any]:
        conversation, mm_data, mm_uuids = parse_chat_messages(
            messages, self.model_config, content_format="string", media_io_kwargs=params.media_io_kwargs,
            mm_processor_kwargs=params.mm_processor_kwargs)
        return self._finish(conversation, mm_data, mm_uuids)

    async def render_messages_async(self, messages: list[Any], params: Any) -> tuple[list[Any], Any]:
        conversation, mm_data, mm_uuids = await parse_chat_messages_async(
            messages, self.model_config, content_format="string", media_io_kwargs=params.media_io_kwargs,
            mm_processor_kwargs=params.mm_processor_kwargs)
        return self._finish(conversation, mm_data, mm_uuids)
