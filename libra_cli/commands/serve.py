"""``libra serve``: the web app (upload current + prior X-ray, read the streamed draft Findings)."""

from __future__ import annotations

import dataclasses
import os
from typing import Annotated

import typer

from libra_cli.commands.options import (
    ENG,
    MODEL_HELP,
    EngineFlags,
    GenerationFlags,
    Group,
    ModelFlags,
    vllm_server_env,
    with_flags,
)
from libra_cli.requests import DEFAULT_MODEL, GenerationSettings

# the page's CCD defaults: --decoding and the --ccd-* flags of the generation group
NOT_CCD = tuple(f.name for f in dataclasses.fields(GenerationFlags) if f.name != "decoding" and not f.name.startswith("ccd_"))


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


@with_flags(load=Group(ModelFlags, exclude=("model",)), ccd=Group(GenerationFlags, exclude=NOT_CCD), eng=EngineFlags)
def serve(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help=MODEL_HELP + " Repeat to offer several; the first is the default (published checkpoints are always listed).", rich_help_panel="Model")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface; mind who can reach it).")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option("--port", help="Port to listen on (default 7860; with --api 8000).", show_default=False)] = None,
    share: Annotated[bool, typer.Option("--share", help="Also open a public Gradio share link (needs internet).")] = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Default maximum tokens on the page.", rich_help_panel="Generation")] = GenerationSettings.max_new_tokens,
    max_loaded: Annotated[int, typer.Option("--max-loaded", help="Models kept in memory at once (least recently used is unloaded).")] = 2,
    queue_size: Annotated[int, typer.Option("--queue-size", help="Requests that may wait in the queue; more are turned away.")] = 32,
    preload: Annotated[bool, typer.Option("--preload/--no-preload", help="Load the default model before serving.")] = True,
    demo: Annotated[bool, typer.Option("--demo", help="Serve the tiny demo model shipped with libra (offline, CPU): the page works out of the box.")] = False,
    api: Annotated[bool, typer.Option("--api", help="With --engine vllm: vLLM's OpenAI-compatible HTTP API (/v1/chat/completions) instead of the web page.", rich_help_panel=ENG)] = False,
    api_url: Annotated[str | None, typer.Option("--api-url", help="The web page on a running Libra vLLM server (libra serve --engine vllm --api), e.g. http://127.0.0.1:8000/v1.", rich_help_panel=ENG)] = None,
    *,
    load: ModelFlags,
    ccd: GenerationFlags,
    eng: EngineFlags,
) -> None:
    """Web app: upload the current and prior X-ray, read the streamed draft Findings (--engine vllm --api: an OpenAI-compatible API)."""
    from libra_cli.errors import InputError

    port = port if port is not None else (8000 if api else 7860)
    if not 0 < port < 65536:
        raise InputError(f"--port {port} is not a valid port; use 1-65535")
    if api or eng.engine != "hf":
        if not (api and eng.check() == "vllm"):
            raise InputError("--engine vllm serves the OpenAI-compatible API: use --engine vllm --api "
                             "(the web page runs --engine hf, or --api-url URL on such a server)")
        from libra_cli.serve.vllm import run_api

        run_api((model or [DEFAULT_MODEL])[0], host=host, port=port, dtype=load.dtype, options=eng.vllm_options(),
                vision_tower=load.vision_tower, conv_mode=load.conv_mode, log=lambda m: typer.echo(m, err=True),
                env=vllm_server_env())
        return
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
    try:
        import gradio  # noqa: F401
    except ImportError as exc:
        raise InputError('libra serve needs gradio: pip install "libra-cli[serve]"') from exc
    from libra_cli.serve.page import serve as run
    from libra_cli.serve.server import CCDOptions, ServeOptions

    s = ccd.settings()  # checked now: a bad value or a missing expert is a one-line error, not a broken page
    page_ccd = CCDOptions(s.decoding == "ccd", s.ccd)
    models = list(model or [])
    if demo:
        models = ["demo", *models]
        if load.device == "auto":
            load.device = "cpu"
    key = dataclasses.replace(load.spec(), model="")
    opts = ServeOptions(models=models, load=key, max_new_tokens=max_new_tokens, max_loaded=max_loaded,
                        queue_size=queue_size, preload=preload, ccd=page_ccd)
    server = None
    if api_url:
        from libra_cli.serve.vllm import api_server

        server = api_server(opts, api_url)
    run(opts, host=host, port=port, share=share, log=lambda m: typer.echo(m, err=True), server=server)
