"""The server behind ``libra serve``: model cache, request handling and streaming, with no Gradio import.

Everything a request does lives here, so it is unit-tested directly; :mod:`libra_cli.serve.page`
only wires it to Gradio components.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from libra_cli.errors import InputError, LibraError, explain
from libra_cli.streaming import QueueStreamer

RESEARCH_NOTICE = "Research use only — not for clinical decisions. Drafts can be wrong; a radiologist must review every finding."
DUMMY_PRIOR_NOTICE = (
    "No prior image: the current image is also used as the prior (dummy prior), as in the original Libra. "
    "The draft cannot describe change over time."
)

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
    compile: bool = False
    jpeg_draft: bool = False
    revision: str | None = None

    def with_model(self, model: str, revision: str | None = None) -> ModelKey:
        return dataclasses.replace(self, model=model, revision=revision)


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
        from libra_cli.checkpoint.load import load_model

        return load_model(**dataclasses.asdict(key))

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
            entry = (self._load_fitting(key), threading.Lock())
            self.loads += 1
            self._entries[key] = entry
            return entry

    def _load_fitting(self, key: ModelKey) -> Any:
        """Load ``key``; when it does not fit beside the models held, unload the least recently used first."""
        from libra_cli.checkpoint.memory import NotEnoughMemory

        while True:
            try:
                return self._load(key)
            except NotEnoughMemory:
                if not self._entries:
                    raise
                _, (_, old_lock) = self._entries.popitem(last=False)
                with old_lock:
                    pass
                _free_memory()

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
class CCDOptions:
    """The page's Clinical Contrastive Decoding controls (defaults from ``libra serve --decoding ccd --ccd-*``)."""

    enabled: bool = False
    alpha: float = 0.5
    beta: float = 0.5
    gamma: float = 10.0
    threshold: float = 0.5
    expert: str = "densenet"
    labels: str | None = None
    compare: bool = False


def with_ccd(settings: Any, ccd: CCDOptions) -> Any:
    """``settings`` switched to CCD with the page's sliders (validated); unchanged when CCD is off."""
    if not ccd.enabled:
        return settings
    s = replace(settings, decoding="ccd", ccd_alpha=float(ccd.alpha), ccd_beta=float(ccd.beta),
                ccd_gamma=float(ccd.gamma), ccd_threshold=float(ccd.threshold), ccd_expert=ccd.expert,
                ccd_labels=ccd.labels or None)
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
    baseline: str | None = None  # CCD "compare with baseline": the same request with standard decoding


@dataclass
class ServeOptions:
    """What ``libra serve`` was started with."""

    models: list[str] = field(default_factory=list)
    load: ModelKey = field(default_factory=lambda: ModelKey(""))
    max_new_tokens: int = 512
    max_loaded: int = 2
    queue_size: int = 32
    preload: bool = True
    ccd: CCDOptions = field(default_factory=CCDOptions)


def model_choices(models: list[str]) -> list[str]:
    """The ``--model`` paths first (in order), then every published checkpoint of the registry."""
    from libra_cli.checkpoint.registry import KNOWN_MODELS

    out: list[str] = []
    for m in [*models, *(k.hub_id for k in KNOWN_MODELS.values())]:
        if m and m not in out:
            out.append(m)
    return out


def file_path(f: Any) -> str | None:
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

        path = file_path(f)
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
        """The cache key for a model on the page; ``--revision`` pins only the model it was given with."""
        name = (model or self.default_model).strip()
        pinned = self.options.models[:1] == [name]
        return self.options.load.with_model(name, self.options.load.revision if pinned else None)

    def preload(self) -> None:
        self.cache.get(self.key(None))

    def run(self, model: str | None, current: Any, prior: Any, prompt: str | None, context: str | None,
            settings: Any, compare: bool = False) -> Iterator[Update]:
        """Generate one report, yielding the text as it grows; errors end in an ``Update`` with ``error``.

        ``compare`` (CCD only): then also the standard-decoding report of the same request, as the
        reference demo's "compare with baseline".
        """
        from libra_cli.generation import generate_report
        from libra_cli.images import load_image

        name = (model or self.default_model).strip()
        try:
            cur_path, prior_path = file_path(current), file_path(prior)
            if cur_path is None:
                raise InputError("no current X-ray: upload the current study (or load the example pair) first")
            cur_img = load_named(load_image, cur_path, "current")
            prior_img = load_named(load_image, prior_path, "prior") if prior_path else None
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
                baseline = None
                if compare and settings.decoding == "ccd":
                    yield Update(text=report.text, status="generating the baseline (standard decoding) …", model=name)
                    baseline = generate_report(loaded, cur_img, prior_img, query, ctx, replace(settings, decoding="standard"))
        except LibraError as exc:
            yield Update(error=str(exc), status="error", model=name, done=True)
            return
        except Exception as exc:  # noqa: BLE001 - the page shows it instead of a dead spinner
            yield Update(error=(explain(exc) or (f"internal error: {type(exc).__name__}: {exc}",))[0],
                         status="error", model=name, done=True)
            return
        path = self._write_download(report, name, loaded, cur_path, prior_path, ctx)
        t = report.timings
        status = (f"{int(t['new_tokens'])} tokens in {t['generate_s']:.1f} s · model {name} · "
                  f"prior: {'dummy (copy of current)' if report.prior_is_dummy else 'given'}")
        if report.ccd is not None:
            status += f" · CCD guidance: {report.ccd['guide'].strip()}"
        yield Update(text=report.text, status=status, report=report, download=str(path), model=name, done=True,
                     baseline=baseline.text if baseline is not None else None)

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
            *([f"CCD guidance: {report.ccd['guide'].strip()}"] if report.ccd is not None else []),
            f"generated: {stamp:%Y-%m-%d %H:%M:%S} UTC",
            f"NOTE: {RESEARCH_NOTICE}",
            "",
        ]
        from libra_cli.atomic import write_text_atomic

        return write_text_atomic(path, "\n".join(lines))


def load_named(load_image: Callable[[str], Any], path: str, what: str) -> Any:
    try:
        return load_image(path)
    except InputError as exc:
        raise InputError(f"{what} X-ray: {str(exc).replace(path, os.path.basename(path))}") from exc


def _describe_settings(s: dict[str, Any]) -> str:
    if s.get("decoding") == "ccd":
        source = f"labels {os.path.basename(s['ccd_labels'])}" if s.get("ccd_labels") else f"expert {s['ccd_expert']}"
        return (f"CCD (alpha {s['ccd_alpha']}, beta {s['ccd_beta']}, gamma {s['ccd_gamma']}, {source}) + "
                + _describe_settings({k: v for k, v in s.items() if k != "decoding"}))
    if s.get("num_beams", 1) > 1:
        return f"beam search ({s['num_beams']} beams, length penalty {s['length_penalty']}), max {s['max_new_tokens']} tokens"
    if s.get("temperature", 0) > 0:
        return (f"sampling (temperature {s['temperature']}, top-p {s.get('top_p')}, top-k {s.get('top_k')}, "
                f"seed {s.get('seed')}), max {s['max_new_tokens']} tokens")
    return f"greedy, max {s['max_new_tokens']} tokens"


def check_port(host: str, port: int) -> None:
    """A one-line error when the address is taken or cannot be bound."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, port))
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port or --host") from exc
