"""The web app behind ``libra serve``: model cache, request handling, streaming and the Gradio page.

The core (``ModelCache``, ``QueueStreamer``, ``Server.check_image`` / ``Server.run``) has no Gradio
dependency, so it is unit-tested directly; ``build_app`` only wires it to components. Gradio is
imported lazily (the ``serve`` extra).
"""

from __future__ import annotations

import html
import os
import queue
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from libra_cli.errors import InputError, LibraError
from libra_cli.streaming import DecodingStreamer

RESEARCH_NOTICE = "Research use only — not for clinical decisions. Drafts can be wrong; a radiologist must review every finding."
DUMMY_PRIOR_NOTICE = (
    "No prior image: the current image is also used as the prior (dummy prior), as in the original Libra. "
    "The draft cannot describe change over time."
)
EXAMPLES_DIR = Path(__file__).resolve().parent / "resources" / "examples"
DECODING_MODES = ("Greedy", "Sampling", "Beam search")
PREVIEW_SIDE = 512


# ----------------------------------------------------------------------------- model cache


@dataclass(frozen=True)
class ModelKey:
    """Everything that changes what ``load_model`` returns: one cache entry per distinct key."""

    model: str
    model_base: str | None = None
    vision_tower: str | None = None
    conv_mode: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    attn: str = "auto"
    load_4bit: bool = False
    load_8bit: bool = False

    def with_model(self, model: str) -> ModelKey:
        return ModelKey(model, self.model_base, self.vision_tower, self.conv_mode, self.dtype, self.device,
                        self.attn, self.load_4bit, self.load_8bit)


class ModelCache:
    """Loaded models keyed by model + load options, loaded once, least recently used evicted.

    Each entry carries a lock: one generation per model at a time, so concurrent users queue
    instead of racing on the same weights (and on GPU memory).
    """

    def __init__(self, capacity: int = 2, loader: Callable[..., Any] | None = None) -> None:
        if capacity < 1:
            raise InputError("--max-loaded must be at least 1")
        self.capacity = capacity
        self._loader = loader
        self._entries: OrderedDict[ModelKey, tuple[Any, threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def _load(self, key: ModelKey) -> Any:
        if self._loader is not None:
            return self._loader(key)
        from libra_cli.loading import load_model

        return load_model(key.model, model_base=key.model_base, vision_tower=key.vision_tower, dtype=key.dtype,
                          device=key.device, attn=key.attn, conv_mode=key.conv_mode, load_4bit=key.load_4bit,
                          load_8bit=key.load_8bit)

    def get(self, key: ModelKey) -> tuple[Any, threading.Lock]:
        """The loaded model for ``key`` and its generation lock (loads it on first use)."""
        with self._lock:  # one load at a time: two users asking for a 7B model must not load it twice
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            while len(self._entries) >= self.capacity:
                old_key, (_, old_lock) = self._entries.popitem(last=False)
                with old_lock:  # wait for a running generation on the evicted model
                    pass
                _free_memory()
            entry = (self._load(key), threading.Lock())
            self.loads += 1
            self._entries[key] = entry
            return entry

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def _free_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


# ----------------------------------------------------------------------------- streaming


_STOP = object()


class QueueStreamer(DecodingStreamer):
    """A ``generate`` streamer in the manner of transformers' ``TextIteratorStreamer``.

    ``generate`` runs in a worker thread and calls ``put``/``end``; the request handler iterates
    over the streamer and gets the whole answer so far after each token (decoding: see
    :class:`~libra_cli.streaming.DecodingStreamer`). A failure in the worker is re-raised in the
    iterating thread.
    """

    def __init__(self, loaded: Any, timeout: float | None = 600.0) -> None:
        super().__init__(loaded)
        self.timeout = timeout
        self._q: queue.Queue[Any] = queue.Queue()

    def on_text(self, text: str) -> None:
        self._q.put(text)

    def on_end(self, text: str) -> None:
        self._q.put(_STOP)

    def fail(self, exc: BaseException) -> None:
        self._q.put(exc)

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                item = self._q.get(timeout=self.timeout)
            except queue.Empty as exc:
                raise LibraError(f"generation produced nothing for {self.timeout:.0f} s; try again") from exc
            if item is _STOP:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


# ----------------------------------------------------------------------------- requests


def decoding_settings(mode: str, max_new_tokens: int, temperature: float, top_p: float, top_k: int,
                      num_beams: int, length_penalty: float, seed: int | None) -> Any:
    """GenerationSettings for the page's decoding controls (validated)."""
    from libra_cli.generation import GenerationSettings

    if mode not in DECODING_MODES:
        raise InputError(f"unknown decoding mode {mode!r}; choose one of {', '.join(DECODING_MODES)}")
    s = GenerationSettings(max_new_tokens=int(max_new_tokens))
    if mode == "Sampling":
        if temperature <= 0:
            raise InputError("sampling needs a temperature above 0; raise it or choose Greedy")
        s.temperature = float(temperature)
        s.top_p = float(top_p) if top_p else None
        s.top_k = int(top_k) if top_k else None
        s.seed = None if seed is None or seed < 0 else int(seed)
    elif mode == "Beam search":
        s.num_beams = max(2, int(num_beams))
        s.length_penalty = float(length_penalty)
    s.validate()
    return s


@dataclass
class Update:
    """One step of a request: the text so far, a status line, and the final report when done."""

    text: str = ""
    status: str = ""
    error: str | None = None
    report: Any = None
    download: str | None = None
    model: str = ""
    done: bool = False


@dataclass
class ServeOptions:
    """What ``libra serve`` was started with."""

    models: list[str] = field(default_factory=list)
    load: ModelKey = field(default_factory=lambda: ModelKey(""))
    max_new_tokens: int = 512
    max_loaded: int = 2
    queue_size: int = 32
    preload: bool = True


def model_choices(models: list[str]) -> list[str]:
    """The ``--model`` paths first (in order), then every published checkpoint of the registry."""
    from libra_cli.registry import KNOWN_MODELS

    out: list[str] = []
    for m in [*models, *(k.hub_id for k in KNOWN_MODELS.values())]:
        if m and m not in out:
            out.append(m)
    return out


def _file_path(f: Any) -> str | None:
    """A path from whatever Gradio hands over (str, dict or FileData-like), ``None`` if empty."""
    if f is None:
        return None
    if isinstance(f, (str, Path)):
        return str(f) or None
    if isinstance(f, dict):
        return f.get("path") or f.get("name")
    return getattr(f, "path", None) or getattr(f, "name", None)


class Server:
    """Request handling for the page (Gradio-free)."""

    def __init__(self, options: ServeOptions, cache: ModelCache | None = None) -> None:
        self.options = options
        self.cache = cache or ModelCache(options.max_loaded)
        self.choices = model_choices(options.models)
        self.default_model = self.choices[0]
        self.downloads = Path(tempfile.mkdtemp(prefix="libra-serve-"))

    # -- images ------------------------------------------------------------------------------

    @staticmethod
    def check_image(f: Any, what: str) -> tuple[Any, str | None]:
        """(preview image, error message) for an uploaded file; a bad file gives an error, not a crash."""
        from libra_cli.images import load_image

        path = _file_path(f)
        if path is None:
            return None, None
        try:
            img = load_image(path)
        except InputError as exc:
            name = os.path.basename(path)
            msg = str(exc).replace(path, name)
            return None, f"{what} X-ray: {msg}"
        img = img.copy()
        img.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        return img, None

    # -- generation --------------------------------------------------------------------------

    def key(self, model: str | None) -> ModelKey:
        return self.options.load.with_model((model or self.default_model).strip())

    def preload(self) -> None:
        self.cache.get(self.key(None))

    def run(self, model: str | None, current: Any, prior: Any, prompt: str | None, context: str | None,
            settings: Any) -> Iterator[Update]:
        """Generate one report, yielding the text as it grows; errors end in an ``Update`` with ``error``."""
        from libra_cli.generation import generate_report
        from libra_cli.images import load_image

        name = (model or self.default_model).strip()
        try:
            cur_path, prior_path = _file_path(current), _file_path(prior)
            if cur_path is None:
                raise InputError("no current X-ray: upload the current study (or load the example pair) first")
            cur_img = _load_named(load_image, cur_path, "current")
            prior_img = _load_named(load_image, prior_path, "prior") if prior_path else None
            yield Update(status=f"loading {name} …" if self.key(name) not in self.cache else "waiting in queue …",
                         model=name)
            loaded, lock = self.cache.get(self.key(name))
            query = prompt.strip() if prompt and prompt.strip() else None
            ctx = context.strip() if context and context.strip() else None
            stream = settings.num_beams == 1 and settings.num_return_sequences == 1
            with lock:
                yield Update(status="generating …", model=name)
                if not stream:
                    report = generate_report(loaded, cur_img, prior_img, query, ctx, settings)
                else:
                    streamer = QueueStreamer(loaded)
                    box: dict[str, Any] = {}

                    def work() -> None:
                        try:
                            box["report"] = generate_report(loaded, cur_img, prior_img, query, ctx, settings,
                                                            streamer=streamer)
                        except BaseException as exc:  # noqa: BLE001 - handed to the request thread
                            streamer.fail(exc)
                        else:
                            streamer.end()

                    worker = threading.Thread(target=work, name="libra-generate", daemon=True)
                    worker.start()
                    for text in streamer:
                        yield Update(text=text, status="generating …", model=name)
                    worker.join()
                    report = box["report"]
        except LibraError as exc:
            yield Update(error=str(exc), status="error", model=name, done=True)
            return
        except Exception as exc:  # noqa: BLE001 - the page shows it instead of a dead spinner
            from libra_cli.cli import _known_failure

            yield Update(error=_known_failure(exc) or f"internal error: {type(exc).__name__}: {exc}",
                         status="error", model=name, done=True)
            return
        path = self._write_download(report, name, loaded, cur_path, prior_path, ctx)
        t = report.timings
        status = (f"{int(t['new_tokens'])} tokens in {t['generate_s']:.1f} s · model {name} · "
                  f"prior: {'dummy (copy of current)' if report.prior_is_dummy else 'given'}")
        yield Update(text=report.text, status=status, report=report, download=str(path), model=name, done=True)

    def _write_download(self, report: Any, model: str, loaded: Any, cur: str, prior: str | None,
                        context: str | None) -> Path:
        """The report as a text file with what the model saw, for the download button."""
        stamp = datetime.now(timezone.utc)
        path = self.downloads / f"libra-report-{stamp:%Y%m%d-%H%M%S-%f}.txt"
        prior_line = os.path.basename(prior) if prior else "none (dummy: the current image was used as the prior)"
        lines = [
            "FINDINGS (draft, generated)",
            "",
            report.text,
            "",
            "----",
            f"model: {model} (template {loaded.conv_mode})",
            f"current image: {os.path.basename(cur)}",
            f"prior image: {prior_line}",
            f"clinical context: {context or 'none'}",
            f"decoding: {_describe_settings(report.settings)}",
            f"generated: {stamp:%Y-%m-%d %H:%M:%S} UTC",
            f"NOTE: {RESEARCH_NOTICE}",
            "",
        ]
        from libra_cli.atomic import write_text_atomic

        return write_text_atomic(path, "\n".join(lines))


def _load_named(load_image: Callable[[str], Any], path: str, what: str) -> Any:
    try:
        return load_image(path)
    except InputError as exc:
        raise InputError(f"{what} X-ray: {str(exc).replace(path, os.path.basename(path))}") from exc


def _describe_settings(s: dict[str, Any]) -> str:
    if s.get("num_beams", 1) > 1:
        return f"beam search ({s['num_beams']} beams, length penalty {s['length_penalty']}), max {s['max_new_tokens']} tokens"
    if s.get("temperature", 0) > 0:
        return (f"sampling (temperature {s['temperature']}, top-p {s.get('top_p')}, top-k {s.get('top_k')}, "
                f"seed {s.get('seed')}), max {s['max_new_tokens']} tokens")
    return f"greedy, max {s['max_new_tokens']} tokens"


# ----------------------------------------------------------------------------- page

CSS = """
#libra-banner {border-left: 6px solid #b45309; background: #fffbeb; color: #78350f; padding: 10px 14px;
  border-radius: 6px; font-size: 0.95rem}
#libra-banner h1 {font-size: 1.35rem; margin: 0 0 4px 0; color: #1f2937}
.libra-tag {display: inline-block; font-weight: 700; font-size: 0.8rem; letter-spacing: .04em; padding: 2px 8px;
  border-radius: 4px; margin-bottom: 4px}
.libra-tag.current {background: #1d4ed8; color: #fff}
.libra-tag.prior {background: #047857; color: #fff}
.libra-tag.dummy {background: #b45309; color: #fff}
.libra-notice {border: 1px solid #f59e0b; background: #fffbeb; color: #78350f; padding: 8px 12px; border-radius: 6px}
.libra-error {border: 1px solid #dc2626; background: #fef2f2; color: #991b1b; padding: 8px 12px; border-radius: 6px;
  font-weight: 600}
.libra-status {color: #374151; font-size: 0.9rem}
#libra-footer {color: #6b7280; font-size: 0.85rem; text-align: center}
"""


def _tag(kind: str, text: str) -> str:
    return f'<span class="libra-tag {kind}">{html.escape(text)}</span>'


def _error_html(msg: str) -> str:
    return f'<div class="libra-error" role="alert">⚠ {html.escape(msg)}</div>'


def _status_html(msg: str) -> str:
    return f'<div class="libra-status" role="status">{html.escape(msg)}</div>' if msg else ""


def build_app(server: Server) -> Any:
    """The Gradio Blocks page for ``server``."""
    import gradio as gr

    opts = server.options
    examples = (EXAMPLES_DIR / "current.jpg", EXAMPLES_DIR / "prior.jpg")

    def previews(cur_f: Any, prior_f: Any) -> tuple[Any, ...]:
        cur_img, cur_err = server.check_image(cur_f, "current")
        prior_img, prior_err = server.check_image(prior_f, "prior")
        errors = [e for e in (cur_err, prior_err) if e]
        cur_label = "CURRENT study — the one being reported"
        if prior_img is not None:
            prior_label, prior_prev, tag = "PRIOR study — earlier comparison", prior_img, _tag("prior", "PRIOR: uploaded")
        elif cur_img is not None and not prior_err:
            prior_label, prior_prev, tag = ("PRIOR — dummy (copy of the current image)", cur_img,
                                            _tag("dummy", "PRIOR: dummy copy of current"))
        else:
            prior_label, prior_prev, tag = "PRIOR study — none", None, ""
        notice = ""
        if errors:
            notice = "".join(_error_html(e) for e in errors)
        elif cur_img is not None and prior_img is None:
            notice = f'<div class="libra-notice" id="dummy-prior-notice" role="note">{tag} {html.escape(DUMMY_PRIOR_NOTICE)}</div>'
        elif cur_img is not None:
            notice = f'<div class="libra-status">{_tag("current", "CURRENT: uploaded")} {tag} The model compares the two studies.</div>'
        return (gr.update(value=cur_img, label=cur_label), gr.update(value=prior_prev, label=prior_label), notice)

    def generate(model: str, cur_f: Any, prior_f: Any, prompt: str, context: str, mode: str, max_new: float,
                 temperature: float, top_p: float, top_k: float, beams: float, length_penalty: float,
                 seed: float | None) -> Iterator[tuple[Any, ...]]:
        try:
            s = decoding_settings(mode, int(max_new), float(temperature), float(top_p), int(top_k), int(beams),
                                  float(length_penalty), None if seed is None else int(seed))
        except LibraError as exc:
            yield "", _error_html(str(exc)), gr.update(visible=False)
            return
        for u in server.run(model, cur_f, prior_f, prompt, context, s):
            if u.error:
                yield "", _error_html(u.error), gr.update(visible=False)
            elif u.done:
                yield u.text, _status_html(u.status), gr.update(value=u.download, visible=True)
            else:
                yield u.text, _status_html(u.status), gr.update(visible=False)

    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
                           font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"])
    with gr.Blocks(title="Libra — chest X-ray report draft", analytics_enabled=False) as demo:
        demo.libra_theme, demo.libra_css = theme, CSS  # applied by launch() (Gradio 6 takes them there)
        gr.HTML(f'<div id="libra-banner"><h1>Libra — temporal chest X-ray report draft</h1>'
                f'<strong role="note" id="research-notice">⚠ {html.escape(RESEARCH_NOTICE)}</strong></div>')
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=320):
                with gr.Row():
                    with gr.Column(min_width=260):
                        gr.HTML(_tag("current", "CURRENT X-ray (required)"))
                        cur_file = gr.File(label="Drop the current study: JPEG, PNG or DICOM", elem_id="current-file",
                                           height=110)
                        cur_prev = gr.Image(label="CURRENT study", interactive=False, elem_id="current-preview",
                                            height=300, buttons=["fullscreen"])
                    with gr.Column(min_width=260):
                        gr.HTML(_tag("prior", "PRIOR X-ray (optional, earlier study)"))
                        prior_file = gr.File(label="Drop the prior study: JPEG, PNG or DICOM", elem_id="prior-file",
                                             height=110)
                        prior_prev = gr.Image(label="PRIOR study — none", interactive=False, elem_id="prior-preview",
                                              height=300, buttons=["fullscreen"])
                pair_notice = gr.HTML("", elem_id="pair-notice")
                example_btn = gr.Button("Load the example pair (current + prior)", size="sm", elem_id="example-btn",
                                        visible=all(p.is_file() for p in examples))
                prompt = gr.Textbox(label="Prompt", placeholder="default: the model's findings question", lines=2,
                                    elem_id="prompt")
                context = gr.Textbox(label="Clinical context (optional)", lines=2, elem_id="context",
                                     placeholder="e.g. INDICATION: shortness of breath. HISTORY: prior lobectomy.")
                with gr.Accordion("Model and decoding", open=False, elem_id="settings"):
                    model = gr.Dropdown(server.choices, value=server.default_model, label="Model",
                                        allow_custom_value=False, elem_id="model")
                    mode = gr.Radio(list(DECODING_MODES), value="Greedy", label="Decoding", elem_id="mode")
                    max_new = gr.Slider(1, 2048, value=opts.max_new_tokens, step=1, label="Max new tokens",
                                        elem_id="max-new-tokens")
                    with gr.Row():
                        temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (sampling)")
                        top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p (sampling)")
                        top_k = gr.Slider(0, 200, value=0, step=1, label="Top-k (sampling, 0 = off)")
                    with gr.Row():
                        seed = gr.Number(value=-1, precision=0, label="Seed (sampling, -1 = random)")
                        beams = gr.Slider(2, 10, value=3, step=1, label="Beams (beam search)")
                        length_penalty = gr.Slider(0, 3, value=1.0, step=0.1, label="Length penalty (beam search)")
                run_btn = gr.Button("Generate findings", variant="primary", elem_id="generate-btn")
            with gr.Column(scale=2, min_width=320):
                report = gr.Textbox(label="Findings (draft — review before use)", lines=14, max_lines=40,
                                    interactive=False, buttons=["copy"], elem_id="report", autoscroll=True)
                status = gr.HTML("", elem_id="status")
                download = gr.DownloadButton("Download report (.txt)", visible=False, elem_id="download-btn")
        gr.HTML(f'<div id="libra-footer">{html.escape(RESEARCH_NOTICE)} Libra: Zhang et al., ACL 2025.</div>')

        for f in (cur_file, prior_file):
            f.change(previews, [cur_file, prior_file], [cur_prev, prior_prev, pair_notice], concurrency_limit=4,
                     show_progress="hidden")
        example_btn.click(lambda: (str(examples[0]), str(examples[1])), None, [cur_file, prior_file])
        run_btn.click(generate, [model, cur_file, prior_file, prompt, context, mode, max_new, temperature, top_p,
                                 top_k, beams, length_penalty, seed], [report, status, download],
                      concurrency_limit=1, concurrency_id="libra-generate", show_progress="minimal")
    demo.queue(max_size=opts.queue_size, default_concurrency_limit=1)
    return demo


def check_port(host: str, port: int) -> None:
    """A one-line error when the address is taken or cannot be bound."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, port))
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port or --host") from exc


def serve(options: ServeOptions, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          block: bool = True, log: Callable[[str], None] = print) -> Any:
    """Build the page and launch it (preloading the default model so the first request is quick)."""
    check_port(host, port)  # before minutes of model loading, not after
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    server = Server(options)
    if options.preload:
        t0 = time.perf_counter()
        try:
            server.preload()
            log(f"loaded {server.default_model} in {time.perf_counter() - t0:.1f}s")
        except LibraError as exc:  # the page still runs: another model can be chosen there
            log(f"warning: could not preload {server.default_model}: {exc}")
    demo = build_app(server)
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                allowed_paths=[str(EXAMPLES_DIR)], max_file_size="200mb", theme=demo.libra_theme,
                css=demo.libra_css, footer_links=["gradio"], quiet=False, show_error=True)
    return demo
