"""The ``openai`` engine: reports from an OpenAI-compatible Libra server (``libra serve --engine vllm --api``).

The study goes as one chat message (current image, prior image if any, the question with the
clinical context as ``libra infer`` appends it); the server renders libra's prompt and answers,
streamed. Images are sent as their original files (libra decodes them on the server exactly as
locally); they were checked by the caller (``ImageFile``: a path and its decoded image).
"""

from __future__ import annotations

import base64
import mimetypes
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from libra_cli.checkpoint.registry import default_query
from libra_cli.engines.base import OnText
from libra_cli.errors import InputError
from libra_cli.prompts import CONTEXT_PREFIX, strip_stop
from libra_cli.requests import GenerationSettings, Report, Sample


def study_message(current: str | Path, prior: str | Path | None, query: str, context: str | None = None
                  ) -> dict[str, Any]:
    """One user message: the current image, the prior image if given, then the question (+ context)."""

    def part(path: str | Path) -> dict[str, Any]:
        mime = mimetypes.guess_type(str(path))[0] or "image/png"
        data = base64.b64encode(Path(path).read_bytes()).decode()
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}

    text = f"{query.rstrip()} {CONTEXT_PREFIX}{context.strip()}" if context else query
    content = [part(current)] + ([part(prior)] if prior else []) + [{"type": "text", "text": text}]
    return {"role": "user", "content": content}


def _file(image: Any, what: str) -> str:
    """The file behind a study image (a path, or an ``ImageFile``): the server decodes the original bytes."""
    path = getattr(image, "path", image)
    if not isinstance(path, (str, Path)):
        raise InputError(f"the {what} image must be a file to send it to the server")
    return str(path)


class RemoteEngine:
    """One model served by an OpenAI-compatible Libra server: greedy or sampling, streamed."""

    name: ClassVar[str] = "openai"
    conv_mode = "the server's (the model's registry template)"  # the server applies the model's own

    def __init__(self, client: Any, api_url: str, model: str) -> None:
        self.client = client
        self.api_url = api_url
        self.model_name = model

    def check(self, settings: GenerationSettings) -> None:
        settings.validate()
        if settings.num_beams > 1 or settings.num_return_sequences > 1:
            raise InputError("beam search is not offered through the vLLM API; choose Greedy or Sampling")
        if settings.decoding != "standard":
            raise InputError(f"--decoding {settings.decoding} runs in this process, not through the vLLM API")

    def generate(self, samples: list[Sample], settings: GenerationSettings, *,
                 on_text: OnText | None = None) -> list[Report]:
        self.check(settings)
        return [self._one(s, settings, on_text if len(samples) == 1 else None) for s in samples]

    def _one(self, sample: Sample, settings: GenerationSettings, on_text: OnText | None) -> Report:
        current = _file(sample.current, "current")
        prior = None if sample.dummy_prior else _file(sample.prior, "prior")
        query = sample.query if sample.query is not None else default_query(self.model_name)
        t0 = time.perf_counter()
        kw: dict[str, Any] = {"temperature": settings.temperature, "max_tokens": settings.max_new_tokens}
        if settings.do_sample:
            kw.update(top_p=settings.top_p or 1.0, seed=settings.seed)
            if settings.top_k:
                kw["extra_body"] = {"top_k": settings.top_k}
        text, n_tokens = "", 0
        try:
            stream = self.client.chat.completions.create(
                model=self.model_name, messages=[study_message(current, prior, query, sample.context)], stream=True,
                stream_options={"include_usage": True}, **kw)
            for chunk in stream:
                if chunk.usage is not None:
                    n_tokens = chunk.usage.completion_tokens
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                    if on_text is not None:
                        on_text(text.strip())
        except Exception as exc:  # noqa: BLE001 - connection and server errors vary
            raise InputError(f"the vLLM server failed: {type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - t0
        return Report(text=strip_stop(text, None), prompt="", token_ids=[], candidates=[],
                      prior_is_dummy=prior is None, settings=settings.to_dict(), id=sample.id,
                      timings={"new_tokens": float(n_tokens), "generate_s": seconds})


@dataclass
class RemoteModels:
    """The models an OpenAI-compatible Libra server serves, and an engine for each."""

    client: Any
    api_url: str
    models: list[str]

    @classmethod
    def connect(cls, api_url: str, api_key: str = "unused") -> RemoteModels:
        """Ask the server at ``api_url`` (``http://HOST:PORT/v1``) what it serves (needs the ``openai`` client)."""
        try:
            from openai import OpenAI
        except ImportError as exc:
            raise InputError('--api-url needs the openai client: pip install openai (or ".[vllm]")') from exc
        client = OpenAI(base_url=api_url.rstrip("/"), api_key=api_key)
        try:
            served = [m.id for m in client.models.list().data]
        except Exception as exc:  # noqa: BLE001 - connection errors vary
            raise InputError(f"no OpenAI-compatible server answers at {api_url} ({type(exc).__name__}); start "
                             "it with: libra serve --engine vllm --api -m MODEL") from exc
        return cls(client, api_url, served)

    def engine(self, model: str) -> RemoteEngine:
        return RemoteEngine(self.client, self.api_url, model)
