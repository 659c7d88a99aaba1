"""The Clinical Contrastive Decoding engine (``ccd``): an expert's labels steer decoding (:mod:`libra_cli.ccd`).

Runs on a :class:`LoadedModel` in this process, as the ``hf`` engine does, with its own decoder:
both prompts (the original and the clinically guided one) advance in one batch with their own KV
caches. The reports carry what steered them (labels, guidance sentence, guided prompt); the stop
token is not part of the answer (as the reference).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch

from libra_cli.ccd.run import run_ccd
from libra_cli.checkpoint.load import EncoderOutputs, LoadedModel, load_model
from libra_cli.checkpoint.memory import auto_batch_size
from libra_cli.engines.base import OnText, Request, SyncSession
from libra_cli.errors import InputError
from libra_cli.requests import (
    GenerationSettings,
    ModelSpec,
    Prompt,
    Report,
    Sample,
    make_report,
    prompt_ids,
    stage_timings,
    stop_ids,
)
from libra_cli.streaming import TextStreamer


class CcdEngine:
    """CCD (greedy, sampling, or beam search as an extension) on a :class:`LoadedModel`."""

    name: ClassVar[str] = "ccd"

    def __init__(self, model: LoadedModel) -> None:
        self.model = model

    @classmethod
    def load(cls, spec: ModelSpec, *, quiet: bool = False) -> CcdEngine:
        return cls(load_model(**spec.load_kwargs(), quiet=quiet))

    @property
    def conv_mode(self) -> str:
        return self.model.conv_mode

    def check(self, settings: GenerationSettings) -> None:
        settings.validate()
        if settings.decoding != "ccd":
            raise InputError(f"the ccd engine runs --decoding ccd, not {settings.decoding!r}")

    def encode_images(self, pixels: list[Any]) -> list[Any]:
        return list(self.model.encode_images(pixels))

    def session(self, settings: GenerationSettings, batch_size: int | str, max_prompt_len: int,
                n: int) -> SyncSession:
        self.check(settings)
        bs = auto_batch_size(self.model, settings, max_prompt_len, n) if batch_size == "auto" else int(batch_size)
        return SyncSession(lambda reqs: self.run(reqs, settings), bs)

    def run(self, requests: list[Request], settings: GenerationSettings) -> list[Report]:
        """A planned batch of a ``libra batch`` run: prompts rendered and images encoded already."""
        return self.generate([r.sample for r in requests], settings, prompts=[r.prompt for r in requests],
                             encoder_outputs=[r.images for r in requests])

    def generate(self, samples: list[Sample], settings: GenerationSettings, *, on_text: OnText | None = None,
                 streamer: Any = None, prompts: list[Prompt] | None = None,
                 encoder_outputs: list[EncoderOutputs] | None = None,
                 image_features: torch.Tensor | None = None) -> list[Report]:
        """One report per sample; images as :meth:`libra_cli.engines.hf.HfEngine.generate` takes them."""
        self.check(settings)
        loaded = self.model
        t0 = time.perf_counter()
        rendered = prompts if prompts is not None else [prompt_ids(loaded, s) for s in samples]
        precomputed = image_features is not None or encoder_outputs is not None
        pixels = None if precomputed else loaded.pixel_batch(samples)
        t_prep = time.perf_counter()
        features = loaded.image_features(samples, encoder_outputs, image_features, pixels)
        t_enc = time.perf_counter()
        eos_ids, _ = stop_ids(loaded, rendered[0].stop)
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        if streamer is None and on_text is not None:
            streamer = TextStreamer(loaded, on_text)
        with torch.inference_mode():
            results = run_ccd(loaded, samples, rendered, settings, features,
                              lambda s, guide: prompt_ids(loaded, s, guide), eos_ids, streamer)
        t_gen = time.perf_counter()
        reports = []
        for s, p, r in zip(samples, rendered, results, strict=True):
            answers = list(zip(r.decoded.sequences, r.decoded.scores, strict=True))
            extras = {"labels": r.labels, "guide": r.guide, "guided_prompt": r.guided_prompt}
            reports.append(make_report(loaded, s, p, answers, settings, ccd=extras))
        t = stage_timings(t0, t_prep, t_enc, t_gen, sum(len(ids) for r in results for ids in r.decoded.sequences))
        for rep in reports:
            rep.timings = dict(t)
        return reports
