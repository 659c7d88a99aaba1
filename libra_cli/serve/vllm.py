"""Serving on vLLM: the OpenAI-compatible server, and the web page on top of it.

- :func:`run_api`: ``libra serve --engine vllm --api``: this process becomes vLLM's own OpenAI server
  for a Libra checkpoint (the plugin's tokenizer mode, prefix caching, two images per study);
- :func:`api_server`: ``libra serve --api-url http://HOST:PORT/v1``, the web page's request handler
  (:class:`~libra_cli.serve.server.Server`) with reports from such a server (the ``openai`` engine,
  :mod:`libra_cli.engines.remote`).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from libra_cli.engines.remote import RemoteModels
from libra_cli.serve.server import ServeOptions, Server, check_port
from libra_cli.vllm_engine.options import VllmOptions


def api_server(options: ServeOptions, api_url: str) -> Server:
    """The page's handler for ``--api-url`` (needs the ``openai`` package, part of the vLLM extras)."""
    remote = RemoteModels.connect(api_url)
    options.models = list(remote.models)
    return Server(options, remote=remote)


def run_api(model: str, *, host: str, port: int, dtype: str = "auto", options: VllmOptions | None = None,
            vision_tower: str | None = None, conv_mode: str | None = None, served_model_name: str | None = None,
            log: Any = print, env: dict[str, str] | None = None) -> None:
    """Replace this process with vLLM's API server (Ctrl-C / SIGTERM stop it and its engine); ``env``: its environment."""
    # imported here: the page on a remote server (api_server) needs neither torch nor vLLM
    from libra_cli.checkpoint import registry, runtime
    from libra_cli.engines.vllm import full_checkpoint
    from libra_cli.vllm_engine.api import api_argv
    from libra_cli.vllm_engine.available import require_vllm
    from libra_cli.vllm_engine.options import on_cpu

    require_vllm()
    options = options or VllmOptions()
    options.validate()
    check_port(host, port)
    folder, config = full_checkpoint(model, "the vLLM server")
    conv = registry.conv_mode_for(model, config, conv_mode)
    known = registry.lookup(model)
    torch_dtype = runtime.resolve_dtype(dtype, "cpu" if on_cpu() else "cuda", config)
    name = served_model_name or model
    argv = api_argv(folder, host=host, port=port, dtype=runtime.dtype_name(torch_dtype), options=options,
                    vision_tower=vision_tower, conv_mode=conv, served_model_name=name,
                    default_query=known.default_query if known else None)
    log(f"vLLM OpenAI-compatible server for {model} on http://{host}:{port}/v1 (model name {name!r}); "
        "send the current image, optionally the prior image, and the question as parts of one user message "
        "(docs/engines.md)")
    log("running: " + " ".join(argv[1:]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env if env is not None else dict(os.environ))
