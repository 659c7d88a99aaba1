"""The transformers engine (``hf``): ``model.generate`` on a left-padded batch, in this process.

Inputs are left-padded; image features are scattered into the embeddings of each sample's own
placeholders, so a sample's output does not depend on what else is in its batch. Images enter as
pixels, or already encoded (``encoder_outputs``, as transformers' LLaVA takes ``image_outputs``)
when a caller such as ``libra batch`` encodes each image once for many samples. Greedy, sampling
and beam search; beam search shares the prompt's KV cache across beams
(:mod:`libra_cli.model.shared_prefix`) and scores candidates from each step's top-k
(:mod:`libra_cli.beam_scores`).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import CompileConfig

from libra_cli import beam_scores
from libra_cli.checkpoint.load import EncoderOutputs, LoadedModel, load_model
from libra_cli.checkpoint.memory import auto_batch_size
from libra_cli.engines.base import OnText, Request, SyncSession
from libra_cli.errors import InputError
from libra_cli.model import shared_prefix
from libra_cli.model.modeling import cache_kwarg
from libra_cli.requests import (
    Answers,
    GenerationSettings,
    ModelSpec,
    Prompt,
    Report,
    Sample,
    make_report,
    prompt_ids,
    stage_timings,
    stop_ids,
    trim_at_eos,
)
from libra_cli.streaming import TextStreamer


@dataclass
class BatchInputs:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | None
    prompts: list[str]
    stop: str
    prior_is_dummy: list[bool]


def prepare_batch(loaded: LoadedModel, samples: list[Sample], with_pixels: bool = True,
                  prompts: list[Prompt] | None = None) -> BatchInputs:
    """Tokenise (unless ``prompts`` are given), left-pad and preprocess a list of samples.

    ``with_pixels=False`` skips image loading (the caller has the image features already).
    """
    rendered = prompts if prompts is not None else [prompt_ids(loaded, s) for s in samples]
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    width = max(len(p.ids) for p in rendered)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, p in enumerate(rendered):
        input_ids[i, width - len(p.ids):] = torch.tensor(p.ids, dtype=torch.long)
        mask[i, width - len(p.ids):] = 1
    pixel_values = loaded.pixel_batch(samples) if with_pixels else None
    return BatchInputs(input_ids, mask, pixel_values, [p.text for p in rendered], rendered[0].stop,
                       [s.dummy_prior for s in samples])


def generate_kwargs(settings: GenerationSettings) -> dict[str, Any]:
    """Keyword arguments for transformers' ``model.generate``."""
    kw: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "do_sample": settings.do_sample,
        "num_beams": settings.num_beams,
        "num_return_sequences": settings.num_return_sequences,
        "use_cache": True,
    }
    if settings.do_sample:
        kw["temperature"] = settings.temperature
        kw["top_p"] = settings.top_p if settings.top_p is not None else 1.0
        kw["top_k"] = settings.top_k if settings.top_k is not None else 0
    else:
        kw.update(temperature=None, top_p=None, top_k=None)
    if settings.num_beams > 1:
        kw["length_penalty"] = settings.length_penalty
        kw["early_stopping"] = False
    if settings.ngram:
        kw["no_repeat_ngram_size"] = settings.ngram
    if settings.repetition_penalty:
        kw["repetition_penalty"] = settings.repetition_penalty
    return kw


class HfEngine:
    """Standard decoding with transformers' ``generate`` on a :class:`LoadedModel`."""

    name: ClassVar[str] = "hf"

    def __init__(self, model: LoadedModel) -> None:
        self.model = model

    @classmethod
    def load(cls, spec: ModelSpec, *, quiet: bool = False) -> HfEngine:
        return cls(load_model(**spec.load_kwargs(), quiet=quiet))

    @property
    def conv_mode(self) -> str:
        return self.model.conv_mode

    def check(self, settings: GenerationSettings) -> None:
        settings.validate()
        if settings.decoding != "standard":
            raise InputError(f"the hf engine runs standard decoding; --decoding {settings.decoding} runs on its own "
                             "engine (libra_cli.engines.for_model picks it)")

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
        """One report per sample (a left-padded batch).

        Images come from the samples, or precomputed: ``encoder_outputs`` (per sample, the current's
        and the prior's encoder output ``[L, P, D]`` from ``LoadedModel.encode_images``; prior None =
        dummy prior), or ``image_features`` (connector output ``[B, P, H]``). ``streamer``: a
        transformers streamer (``libra_cli.streaming``); ``on_text``: the answer so far, as text.
        """
        self.check(settings)
        loaded = self.model
        t0 = time.perf_counter()
        rendered = prompts if prompts is not None else [prompt_ids(loaded, s) for s in samples]
        precomputed = image_features is not None or encoder_outputs is not None
        batch = prepare_batch(loaded, samples, with_pixels=not precomputed, prompts=rendered)
        t_prep = time.perf_counter()
        features = loaded.image_features(samples, encoder_outputs, image_features, batch.pixel_values)
        t_enc = time.perf_counter()
        eos_ids, stop_strings = stop_ids(loaded, batch.stop)
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        if streamer is None and on_text is not None:
            streamer = TextStreamer(loaded, on_text)
        with torch.inference_mode():
            answers = self._decode(batch, settings, features, eos_ids, stop_strings, streamer)
        t_gen = time.perf_counter()
        reports = [make_report(loaded, s, p, a, settings) for s, p, a in zip(samples, rendered, answers, strict=True)]
        t = stage_timings(t0, t_prep, t_enc, t_gen, sum(len(ids) for a in answers for ids, _ in a))
        for r in reports:
            r.timings = dict(t)
        return reports

    def _decode(self, batch: BatchInputs, settings: GenerationSettings, features: torch.Tensor,
                eos_ids: list[int], stop_strings: list[str] | None, streamer: Any) -> list[Answers]:
        """transformers' ``generate`` (greedy, sampling, beam search) on the left-padded batch."""
        loaded = self.model
        model = loaded.model
        dev = loaded.input_device
        kw = generate_kwargs(settings)
        if stop_strings:
            kw.update(stop_strings=stop_strings, tokenizer=loaded.tokenizer)
        ids, mask = batch.input_ids.to(dev), batch.attention_mask.to(dev)
        decode_kw, attention = self._decode_kwargs(settings, ids, mask, features)
        want_scores = settings.num_return_sequences > 1
        # beam search: scores from each step's top-k, not transformers' per-step [beams, vocab] copies
        rec = beam_scores.attach(kw, settings.num_beams) if want_scores and settings.num_beams > 1 \
            and not settings.do_sample else None
        with attention:
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                eos_token_id=eos_ids,
                pad_token_id=loaded.tokenizer.pad_token_id,
                return_dict_in_generate=True,
                output_scores=want_scores and rec is None,
                streamer=streamer,
                **kw,
                **decode_kw,
            )
        seqs = out.sequences[:, batch.input_ids.shape[1]:].cpu()
        if rec is not None:
            scores = beam_scores.sequence_scores(rec, out.sequences, out.beam_indices, batch.input_ids.shape[1],
                                                 settings.length_penalty)
        else:
            scores = _sequence_scores(model, out, seqs)
        n = settings.num_return_sequences
        pad = loaded.tokenizer.pad_token_id
        return [[(trim_at_eos(seqs[i * n + j].tolist(), eos_ids, pad), scores[i * n + j] if scores is not None else None)
                 for j in range(n)] for i in range(len(batch.prompts))]

    def _decode_kwargs(self, settings: GenerationSettings, ids: torch.Tensor, mask: torch.Tensor,
                       image_features: torch.Tensor) -> tuple[dict[str, Any], AbstractContextManager[Any]]:
        """How the decode loop runs (speed only; the tokens are the same): image features or a shared prefix, compile.

        - beam search: the prompt is prefilled once per sample and its KV cache shared by the beams
          (:mod:`libra_cli.model.shared_prefix`), unless ``LoadedModel.shared_prefix`` is off or the model can't;
        - ``LoadedModel.compile`` (``--compile``), greedy/sampling: a static KV cache and a ``torch.compile``d
          decode step (CUDA graphs on a GPU). The cache length is rounded up to 256, so prompts of
          similar length reuse one compiled graph.
        """
        loaded = self.model
        model = loaded.model
        if settings.num_beams > 1 and ids.shape[1] > 1 and loaded.shared_prefix and shared_prefix.supported(model):
            cache = shared_prefix.prefill_prefix(model, model.embed_multimodal(ids, image_features), mask)
            return {cache_kwarg(model): cache, "shared_prefix": cache}, shared_prefix.attention(model)
        kw: dict[str, Any] = {"image_features": image_features}
        if loaded.compile and settings.num_beams == 1:
            cuda = ids.device.type == "cuda"
            backend = loaded.compile_backend
            cfg = CompileConfig(fullgraph=False, backend=backend,
                                mode="reduce-overhead" if cuda and backend == "inductor" else None)
            cfg._compile_all_devices = not cuda or None  # transformers compiles on accelerators only unless told
            kw.update(cache_implementation="static", compile_config=cfg,
                      max_cache_len=-(-(ids.shape[1] + settings.max_new_tokens) // 256) * 256)
        return kw, nullcontext()


def _sequence_scores(model: Any, out: Any, seqs: torch.Tensor) -> list[float] | None:
    if getattr(out, "sequences_scores", None) is not None:
        return [float(x) for x in out.sequences_scores.cpu()]
    if getattr(out, "scores", None):
        trans = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True).cpu()
        trans = torch.where(torch.isfinite(trans), trans, torch.zeros_like(trans))
        return [float(x) for x in trans.sum(-1)]
    return None
