"""Serving on vLLM: the OpenAI-compatible server, and the web page on top of it.

- :func:`run_api`: ``libra serve --engine vllm --api``: this process becomes vLLM's own OpenAI server
  for a Libra checkpoint (the plugin's tokenizer mode, prefix caching, two images per study);
- :class:`ApiServer`: ``libra serve --api-url http://HOST:PORT/v1``, the web page on such a server.

:class:`ApiServer` is the page's request handler (:class:`libra_cli.serve.server.Server`) with
generation sent to an OpenAI-compatible Libra server (``libra serve --engine vllm --api``) instead
of a model loaded in the page's process: the study goes as one chat message (current image, prior
image if any, the question with the clinical context as ``libra infer`` appends it), and the reply
streams into the page. Images are still checked (and previewed) by libra before they are sent.
"""

from __future__ import annotations

import base64
import mimetypes
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from libra_cli.errors import InputError, LibraError
from libra_cli.serve.server import ServeOptions, Server, Update, check_port, file_path, load_named
from libra_cli.vllm_engine.engine import VllmOptions


def study_message(current: str | Path, prior: str | Path | None, query: str, context: str | None = None
                  ) -> dict[str, Any]:
    """One user message: the current image, the prior image if given, then the question (+ context)."""
    from libra_cli.prompts import CONTEXT_PREFIX

    def part(path: str | Path) -> dict[str, Any]:
        mime = mimetypes.guess_type(str(path))[0] or "image/png"
        data = base64.b64encode(Path(path).read_bytes()).decode()
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}

    text = f"{query.rstrip()} {CONTEXT_PREFIX}{context.strip()}" if context else query
    content = [part(current)] + ([part(prior)] if prior else []) + [{"type": "text", "text": text}]
    return {"role": "user", "content": content}


class ApiServer(Server):
    """``Server`` whose reports come from an OpenAI-compatible Libra server at ``api_url``."""

    def __init__(self, options: ServeOptions, api_url: str, api_key: str = "unused") -> None:
        from openai import OpenAI

        self.client = OpenAI(base_url=api_url.rstrip("/"), api_key=api_key)
        self.api_url = api_url
        try:
            served = [m.id for m in self.client.models.list().data]
        except Exception as exc:  # noqa: BLE001 - connection errors vary
            raise InputError(f"no OpenAI-compatible server answers at {api_url} ({type(exc).__name__}); start "
                             "it with: libra serve --engine vllm --api -m MODEL") from exc
        options.models = served
        super().__init__(options)
        self.choices = served

    def preload(self) -> None:
        """Nothing to load here: the model lives in the API server."""

    def run(self, model: str | None, current: Any, prior: Any, prompt: str | None, context: str | None,
            settings: Any) -> Iterator[Update]:
        from libra_cli.checkpoint.registry import lookup
        from libra_cli.generation import Report
        from libra_cli.images import load_image
        from libra_cli.prompts import DEFAULT_QUERY, strip_stop

        name = (model or self.default_model).strip()
        try:
            cur_path, prior_path = file_path(current), file_path(prior)
            if cur_path is None:
                raise InputError("no current X-ray: upload the current study (or load the example pair) first")
            load_named(load_image, cur_path, "current")
            if prior_path:
                load_named(load_image, prior_path, "prior")
            if settings.num_beams > 1 or settings.num_return_sequences > 1:
                raise InputError("beam search is not offered through the vLLM API; choose Greedy or Sampling")
            known = lookup(name)
            query = prompt.strip() if prompt and prompt.strip() else (known.default_query if known else DEFAULT_QUERY)
            ctx = context.strip() if context and context.strip() else None
            yield Update(status=f"generating on {self.api_url} …", model=name)
            t0 = time.perf_counter()
            kw: dict[str, Any] = {"temperature": settings.temperature, "max_tokens": settings.max_new_tokens}
            if settings.do_sample:
                kw.update(top_p=settings.top_p or 1.0, seed=settings.seed)
                if settings.top_k:
                    kw["extra_body"] = {"top_k": settings.top_k}
            text, n_tokens = "", 0
            stream = self.client.chat.completions.create(
                model=name, messages=[study_message(cur_path, prior_path, query, ctx)], stream=True,
                stream_options={"include_usage": True}, **kw)
            for chunk in stream:
                if chunk.usage is not None:
                    n_tokens = chunk.usage.completion_tokens
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                    yield Update(text=text.strip(), status="generating …", model=name)
            seconds = time.perf_counter() - t0
        except LibraError as exc:
            yield Update(error=str(exc), status="error", model=name, done=True)
            return
        except Exception as exc:  # noqa: BLE001 - the page shows it instead of a dead spinner
            yield Update(error=f"the vLLM server failed: {type(exc).__name__}: {exc}", status="error", model=name,
                         done=True)
            return
        report = Report(text=strip_stop(text, None), prompt="", token_ids=[], candidates=[],
                        prior_is_dummy=prior_path is None, settings=settings.to_dict(),
                        timings={"new_tokens": float(n_tokens), "generate_s": seconds})
        path = self._write_download(report, name, _Template(), cur_path, prior_path, ctx)
        status = (f"{n_tokens} tokens in {seconds:.1f} s · model {name} (vLLM at {self.api_url}) · "
                  f"prior: {'dummy (copy of current)' if prior_path is None else 'given'}")
        yield Update(text=report.text, status=status, report=report, download=str(path), model=name, done=True)


class _Template:
    """What the download file names as the template (the server applies the model's own)."""

    conv_mode = "the server's (the model's registry template)"


def api_server(options: ServeOptions, api_url: str) -> ApiServer:
    """The page's handler for ``--api-url`` (needs the ``openai`` package, part of the vLLM extras)."""
    try:
        import openai  # noqa: F401
    except ImportError as exc:
        raise InputError('--api-url needs the openai client: pip install openai (or ".[vllm]")') from exc
    return ApiServer(options, api_url)


def run_api(model: str, *, host: str, port: int, dtype: str = "auto", options: VllmOptions | None = None,
            vision_tower: str | None = None, conv_mode: str | None = None, served_model_name: str | None = None,
            log: Any = print) -> None:
    """Replace this process with vLLM's API server (Ctrl-C / SIGTERM stop it and its engine)."""
    from libra_cli.checkpoint import registry, runtime
    from libra_cli.vllm_engine.api import api_argv
    from libra_cli.vllm_engine.available import require_vllm, server_logging_env
    from libra_cli.vllm_engine.engine import full_checkpoint, on_cpu

    require_vllm()
    options = options or VllmOptions()
    options.validate()
    check_port(host, port)
    folder, config = full_checkpoint(model, "the vLLM server")
    conv = conv_mode or registry.default_conv_mode(model, config)
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
    os.execve(sys.executable, argv, server_logging_env())
