"""The server behind ``libra serve``: model cache, request handling and streaming, with no Gradio import.

Everything a request does lives here, so it is unit-tested directly; :mod:`libra_cli.serve.page`
only wires it to Gradio components.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from libra_cli.atomic import write_text_atomic
from libra_cli.checkpoint.registry import KNOWN_MODELS
from libra_cli.engines.base import Engine
from libra_cli.engines.registry import for_model
from libra_cli.errors import InputError, LibraError, explain
from libra_cli.images import load_image
from libra_cli.requests import CCDSettings, GenerationSettings, ImageFile, ModelSpec, Report, Sample
from libra_cli.streaming import TextQueue

if TYPE_CHECKING:
    from libra_cli.checkpoint.load import LoadedModel
    from libra_cli.engines.remote import RemoteModels

RESEARCH_NOTICE = "Research use only — not for clinical decisions. Drafts can be wrong; a radiologist must review every finding."
DUMMY_PRIOR_NOTICE = (
    "No prior image: the current image is also used as the prior (dummy prior), as in the original Libra. "
    "The draft cannot describe change over time."
)

DECODING_MODES = ("Greedy", "Sampling", "Beam search")
PREVIEW_SIDE = 512


# ----------------------------------------------------------------------------- model cache


class ModelCache:
    """Loaded models keyed by model + load options (a :class:`ModelSpec`), loaded once, least recently used evicted.

    Each entry carries a lock: one generation per model at a time, so concurrent users queue
    instead of racing on the same weights (and on GPU memory).
    """

    def __init__(self, capacity: int = 2, loader: Callable[[ModelSpec], Any] | None = None) -> None:
        if capacity < 1:
            raise InputError("--max-loaded must be at least 1")
        self.capacity = capacity
        self._loader = loader
        self._entries: OrderedDict[ModelSpec, tuple[Any, threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def _load(self, key: ModelSpec) -> LoadedModel:
        if self._loader is not None:
            return self._loader(key)
        from libra_cli.checkpoint.load import load_model

        return load_model(**key.load_kwargs())

    def get(self, key: ModelSpec) -> tuple[Any, threading.Lock]:
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

    def _load_fitting(self, key: ModelSpec) -> LoadedModel:
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
                      num_beams: int, length_penalty: float, seed: int | None) -> GenerationSettings:
    """GenerationSettings for the page's decoding controls (validated)."""
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
    """The page's Clinical Contrastive Decoding controls: on or off, the settings (defaults from ``libra serve
    --decoding ccd --ccd-*``), and whether to also show the standard-decoding baseline."""

    enabled: bool = False
    settings: CCDSettings = field(default_factory=CCDSettings)
    compare: bool = False


def with_ccd(settings: GenerationSettings, ccd: CCDOptions) -> GenerationSettings:
    """``settings`` switched to CCD with the page's controls (validated); unchanged when CCD is off."""
    if not ccd.enabled:
        return settings
    s = replace(settings, decoding="ccd", ccd=ccd.settings)
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
    fhir: str | None = None  # FHIR DiagnosticReport (DICOM uploads only, libra_cli.pacs)
    sr: str | None = None  # DICOM SR (DICOM uploads only)


@dataclass
class ServeOptions:
    """What ``libra serve`` was started with."""

    models: list[str] = field(default_factory=list)
    load: ModelSpec = field(default_factory=lambda: ModelSpec(""))
    max_new_tokens: int = GenerationSettings.max_new_tokens
    max_loaded: int = 2
    queue_size: int = 32
    preload: bool = True
    ccd: CCDOptions = field(default_factory=CCDOptions)


def model_choices(models: list[str]) -> list[str]:
    """The ``--model`` paths first (in order), then every published checkpoint of the registry."""
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
    """Request handling for the page (Gradio-free), on any engine.

    Models load into this process (:class:`ModelCache`; each request runs on the in-process engine
    its settings name: ``hf``, or ``ccd``), or live in an OpenAI-compatible Libra server
    (``remote``: ``libra serve --api-url``, the ``openai`` engine).
    """

    def __init__(self, options: ServeOptions, cache: ModelCache | None = None,
                 remote: RemoteModels | None = None) -> None:
        self.options = options
        self.remote = remote
        self.cache = cache or ModelCache(options.max_loaded)
        self.choices = list(remote.models) if remote is not None else model_choices(options.models)
        self.default_model = self.choices[0]
        self.downloads = Path(tempfile.mkdtemp(prefix="libra-serve-"))

    # -- images ------------------------------------------------------------------------------

    @staticmethod
    def check_image(f: Any, what: str) -> tuple[Any, str | None]:
        """(preview image, error message) for an uploaded file; a bad file gives an error, not a crash."""
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

    def key(self, model: str | None) -> ModelSpec:
        """The cache key for a model on the page; ``--revision`` pins only the model it was given with."""
        name = (model or self.default_model).strip()
        pinned = self.options.models[:1] == [name]
        return self.options.load.with_model(name, self.options.load.revision if pinned else None)

    def preload(self) -> None:
        if self.remote is None:  # a remote server has its model loaded already
            self.cache.get(self.key(None))

    def _status(self, name: str) -> str:
        if self.remote is not None:
            return f"generating on {self.remote.api_url} …"
        return f"loading {name} …" if self.key(name) not in self.cache else "waiting in queue …"

    def _engine(self, name: str) -> tuple[Callable[[GenerationSettings], Engine], Any]:
        """(engine for settings, the lock a generation holds) for the model called ``name``."""
        if self.remote is not None:
            engine = self.remote.engine(name)
            return (lambda settings: engine), contextlib.nullcontext()
        loaded, lock = self.cache.get(self.key(name))
        return (lambda settings: for_model(loaded, settings)), lock

    def run(self, model: str | None, current: Any, prior: Any, prompt: str | None, context: str | None,
            settings: GenerationSettings, compare: bool = False) -> Iterator[Update]:
        """Generate one report, yielding the text as it grows; errors end in an ``Update`` with ``error``.

        ``compare`` (CCD only): then also the standard-decoding report of the same request, as the
        reference demo's "compare with baseline".
        """
        name = (model or self.default_model).strip()
        try:
            cur_path, prior_path = file_path(current), file_path(prior)
            if cur_path is None:
                raise InputError("no current X-ray: upload the current study (or load the example pair) first")
            cur_img = ImageFile(cur_path, load_named(load_image, cur_path, "current"))
            prior_img = ImageFile(prior_path, load_named(load_image, prior_path, "prior")) if prior_path else None
            query = prompt.strip() if prompt and prompt.strip() else None
            ctx = context.strip() if context and context.strip() else None
            sample = Sample(cur_img, prior_img, query, ctx)
            yield Update(status=self._status(name), model=name)
            engine_for, lock = self._engine(name)
            engine = engine_for(settings)
            engine.check(settings)
            with lock:
                yield Update(status="generating …", model=name)
                report = yield from self._generate(engine, sample, settings, name)
                baseline = None
                if compare and settings.decoding == "ccd":
                    yield Update(text=report.text, status="generating the baseline (standard decoding) …", model=name)
                    standard = replace(settings, decoding="standard")
                    baseline = engine_for(standard).generate([sample], standard)[0]
        except LibraError as exc:
            yield Update(error=str(exc), status="error", model=name, done=True)
            return
        except Exception as exc:  # noqa: BLE001 - the page shows it instead of a dead spinner
            yield Update(error=(explain(exc) or (f"internal error: {type(exc).__name__}: {exc}",))[0],
                         status="error", model=name, done=True)
            return
        path = self._write_download(report, name, engine.conv_mode, cur_path, prior_path, ctx)
        revision = None if self.remote is not None else self.key(name).revision
        fhir, sr = _records(self.downloads, report.text, cur_path, prior_path, name, revision)
        t = report.timings
        where = f" (vLLM at {self.remote.api_url})" if self.remote is not None else ""
        status = (f"{int(t['new_tokens'])} tokens in {t['generate_s']:.1f} s · model {name}{where} · "
                  f"prior: {'dummy (copy of current)' if report.prior_is_dummy else 'given'}")
        if report.ccd is not None:
            status += f" · CCD guidance: {report.ccd['guide'].strip()}"
        yield Update(text=report.text, status=status, report=report, download=str(path), model=name, done=True,
                     baseline=baseline.text if baseline is not None else None, fhir=fhir, sr=sr)

    @staticmethod
    def _generate(engine: Engine, sample: Sample, settings: GenerationSettings, name: str
                  ) -> Generator[Update, None, Report]:
        """The report, streamed into updates when there is one candidate (generation runs in a worker thread)."""
        if settings.num_beams > 1 or settings.num_return_sequences > 1:
            return engine.generate([sample], settings)[0]
        stream = TextQueue()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["report"] = engine.generate([sample], settings, on_text=stream.put)[0]
            except BaseException as exc:  # noqa: BLE001 - handed to the request thread
                stream.fail(exc)
            else:
                stream.close()

        worker = threading.Thread(target=work, name="libra-generate", daemon=True)
        worker.start()
        for text in stream:
            yield Update(text=text, status="generating …", model=name)
        worker.join()
        return box["report"]

    def _write_download(self, report: Report, model: str, conv_mode: str, cur: str, prior: str | None,
                        context: str | None) -> Path:
        """The report as a text file with what the model saw, for the download button."""
        stamp = datetime.now(UTC)
        path = self.downloads / f"libra-report-{stamp:%Y%m%d-%H%M%S-%f}.txt"
        prior_line = os.path.basename(prior) if prior else "none (dummy: the current image was used as the prior)"
        lines = [
            "FINDINGS (draft, generated)",
            "",
            report.text,
            "",
            "----",
            f"model: {model} (template {conv_mode})",
            f"current image: {os.path.basename(cur)}",
            f"prior image: {prior_line}",
            f"clinical context: {context or 'none'}",
            f"decoding: {_describe_settings(report.settings)}",
            *([f"CCD guidance: {report.ccd['guide'].strip()}"] if report.ccd is not None else []),
            f"generated: {stamp:%Y-%m-%d %H:%M:%S} UTC",
            f"NOTE: {RESEARCH_NOTICE}",
            "",
        ]
        return write_text_atomic(path, "\n".join(lines))


def _records(folder: Path, text: str, cur: str, prior: str | None, model: str, revision: str | None
             ) -> tuple[str | None, str | None]:
    """FHIR DiagnosticReport + DICOM SR downloads when the uploads are DICOM files (docs/pacs.md), else (None, None)."""
    from libra_cli.pacs.outputs import page_records

    return page_records(folder, text, cur, prior, model, revision)


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
