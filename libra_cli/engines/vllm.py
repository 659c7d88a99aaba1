"""The vLLM engine (``vllm``): a Libra checkpoint in ``vllm.LLM``, libra's studies in, libra's reports out.

:class:`VllmModel` is the prompt side (template, codec, image preprocessing, token count) of a
checkpoint that vLLM runs, so requests carry the very same prompt text, ids and pixels as with
``--engine hf``; only the forward passes run in vLLM (:mod:`libra_cli.vllm_engine` is the plugin
that makes Libra checkpoints loadable there). Requests carry libra's token ids (the image marker
as one placeholder id, expanded by the plugin's processor) and the study's preprocessed pixels;
reply ids are decoded with libra's codec.

In a batch run (:class:`VllmSession`) every study goes to vLLM's engine as soon as its pixels are
ready and up to ``window`` requests stay in flight (continuous batching, paged KV cache, prefix
caching); each answer comes back when its request finishes. Beam search runs in chunks of
``window`` studies: transformers' algorithm on vLLM's log-probs (:mod:`libra_cli.vllm_engine.beams`),
or vLLM's own beam search where that cannot be exact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from libra_cli.checkpoint import layout, registry, runtime
from libra_cli.checkpoint.hub import hub_folder
from libra_cli.checkpoint.load import read_config
from libra_cli.console import quiet_transformers, warn_once
from libra_cli.engines.base import Done, OnText, Request
from libra_cli.errors import InputError
from libra_cli.images import to_pixels
from libra_cli.model.connectors import uses_prior
from libra_cli.prompts import get_template
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
    trim_at_eos,
)
from libra_cli.streaming import TextStreamer
from libra_cli.vllm_engine.available import require_vllm
from libra_cli.vllm_engine.options import VllmOptions, engine_kwargs, on_cpu

PREFETCH_AHEAD = 64  # studies decoded ahead of the engine (a 518 px pair is ~6 MB of float32 pixels)
LIBRA_KEYS = ("prompt", "libra_ids")  # what a request carries for libra (text, transformers-side ids), not for vLLM


class VllmModel:
    """A Libra checkpoint loaded in vLLM, with libra's prompt side (a :class:`libra_cli.requests.Model`)."""

    device = "vllm"

    def __init__(self, llm: Any, name: str, folder: str, config: Any, conv_mode: str, dtype: Any,
                 load_seconds: float) -> None:
        from libra_cli.vllm_engine.processing import tower_geometry  # imports vLLM: after require_vllm()

        self.llm = llm
        self.name = name
        self.folder = folder
        self.config = config
        self.conv_mode = conv_mode
        self.dtype = dtype
        self.load_seconds = load_seconds
        self.vtok = llm.get_tokenizer()  # LibraTokenizer: hf tokenizer + codec + placeholder id
        self.tokenizer = self.vtok.hf
        self.codec = self.vtok.codec
        self.geometry = tower_geometry(config, folder)
        self.image_processor = self.geometry.processor
        self.kind = "full"
        self.info: dict[str, Any] = {"engine": "vllm"}

    def encode(self, text: str) -> list[int]:
        return self.codec.encode(text) if self.codec is not None else list(self.tokenizer(text).input_ids)

    def decode(self, ids: list[int]) -> str:
        return self.vtok.decode(ids)

    @property
    def num_image_tokens(self) -> int:
        return self.geometry.num_tokens

    @property
    def pad_images(self) -> bool:
        return self.geometry.pad

    @property
    def uses_prior(self) -> bool:
        return uses_prior(self.config)

    @property
    def image_token_id(self) -> int:
        """The placeholder in libra's (transformers-side) prompt ids; vLLM's prompt has ``placeholder_id``."""
        return int(self.config.image_token_id)

    @property
    def placeholder_id(self) -> int:
        return int(self.vtok.placeholder_id)

    def close(self) -> None:
        """Stop vLLM's engine processes now (tests and benchmarks start several engines in one process)."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()

    @property
    def max_num_seqs(self) -> int:
        return int(self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs)


def full_checkpoint(model: str, who: str, alternative: str = "", revision: str | None = None) -> tuple[str, Any]:
    """(local folder, config) of a full checkpoint; vLLM cannot apply LoRA or projector-only folders."""
    folder = hub_folder(model, what="model", revision=revision)
    kind = layout.folder_kind(folder)
    if kind != "full":
        raise InputError(f"{model} is a {kind} folder; {who} runs full checkpoints: merge it first "
                         f"(libra convert FOLDER merged/ --model-base BASE){alternative}")
    return folder, read_config(folder)


def load_vllm_model(model: str, *, vision_tower: str | None = None, conv_mode: str | None = None,
                    dtype: str = "auto", options: VllmOptions | None = None, revision: str | None = None) -> VllmModel:
    """Start vLLM on a full Libra checkpoint (hub id or folder)."""
    require_vllm()
    quiet_transformers()
    options = options or VllmOptions()
    options.validate()
    t0 = time.perf_counter()
    folder, config = full_checkpoint(model, "--engine vllm", " or use --engine hf", revision)
    conv = registry.conv_mode_for(model, config, conv_mode)
    torch_dtype = runtime.resolve_dtype(dtype, "cpu" if on_cpu() else "cuda", config)
    from vllm import LLM

    kw = engine_kwargs(folder, runtime.dtype_name(torch_dtype), options, vision_tower, conv)
    kw["disable_log_stats"] = True
    llm = LLM(**kw)
    if vision_tower:
        config.mm_vision_tower = kw["hf_overrides"]["mm_vision_tower"]
    return VllmModel(llm, str(model), folder, config, conv, torch_dtype, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------- requests


def request(vm: VllmModel, sample: Sample, current: np.ndarray, prior: np.ndarray | None,
            prompt: Prompt | None = None) -> dict[str, Any]:
    """One vLLM prompt: libra's ids with one placeholder for the study, and its preprocessed images."""
    text, libra_ids, _ = prompt if prompt is not None else prompt_ids(vm, sample)
    ids = vm.vtok.encode_study(text)
    images = [current] if prior is None else [current, prior]
    return {"prompt_token_ids": ids, "multi_modal_data": {"image": images}, "prompt": text, "libra_ids": libra_ids}


def engine_prompt(request: dict[str, Any]) -> dict[str, Any]:
    """The part of a :func:`request` that vLLM takes."""
    return {k: v for k, v in request.items() if k not in LIBRA_KEYS}


def sampling_params(vm: VllmModel, settings: GenerationSettings, stop: str, seed: int | None = None) -> Any:
    """``GenerationSettings`` -> ``vllm.SamplingParams`` (greedy, or sampling with n candidates)."""
    from vllm import SamplingParams

    eos_ids, stop_strings = stop_ids(vm, stop)
    kw: dict[str, Any] = {
        "max_tokens": settings.max_new_tokens,
        "n": settings.num_return_sequences,
        "stop_token_ids": eos_ids,
        "skip_special_tokens": True,
        "detokenize": bool(stop_strings),  # text is decoded with libra's codec; vLLM only for stop strings
        "output_kind": None,
    }
    if stop_strings:
        kw.update(stop=stop_strings, include_stop_str_in_output=True)
    if settings.do_sample:
        kw.update(temperature=settings.temperature, top_p=settings.top_p if settings.top_p is not None else 1.0,
                  top_k=settings.top_k if settings.top_k else 0, seed=seed if seed is not None else settings.seed)
    else:
        kw["temperature"] = 0.0
    if settings.repetition_penalty:
        kw["repetition_penalty"] = settings.repetition_penalty
    if settings.num_return_sequences > 1:
        kw["logprobs"] = 0
    kw = {k: v for k, v in kw.items() if v is not None}
    return SamplingParams(**kw)


def beam_params(settings: GenerationSettings) -> Any:
    from vllm.sampling_params import BeamSearchParams

    return BeamSearchParams(beam_width=settings.num_beams, max_tokens=settings.max_new_tokens,
                            length_penalty=settings.length_penalty)


def report(vm: VllmModel, sample: Sample, prompt: Prompt, candidates: list[tuple[list[int], float | None]],
           settings: GenerationSettings) -> Report:
    """libra's ``Report`` from vLLM's candidate ids, trimmed at EOS and decoded as the transformers engine does."""
    eos_ids, _ = stop_ids(vm, prompt.stop)
    pad = vm.tokenizer.pad_token_id
    return make_report(vm, sample, prompt, [(trim_at_eos(list(ids), eos_ids, pad), s) for ids, s in candidates],
                       settings)


# ---------------------------------------------------------------------------------- the engine


class VllmEngine:
    """Greedy, sampling and beam search on vLLM (continuous batching, paged attention, tensor parallel)."""

    name: ClassVar[str] = "vllm"

    def __init__(self, model: VllmModel) -> None:
        self.model = model

    @classmethod
    def load(cls, spec: ModelSpec, *, quiet: bool = False, options: VllmOptions | None = None) -> VllmEngine:
        return cls(load_vllm_model(spec.model, vision_tower=spec.vision_tower, conv_mode=spec.conv_mode,
                                   dtype=spec.dtype, options=options, revision=spec.revision))

    @property
    def conv_mode(self) -> str:
        return self.model.conv_mode

    def check(self, settings: GenerationSettings) -> None:
        settings.validate()
        if settings.decoding != "standard":
            raise InputError(f"--decoding {settings.decoding} runs in this process: use --engine hf")

    def encode_images(self, pixels: list[Any]) -> list[Any]:
        """vLLM encodes the images itself (with its own multimodal cache): requests carry the pixels."""
        return list(pixels)

    def session(self, settings: GenerationSettings, batch_size: int | str, max_prompt_len: int,
                n: int) -> VllmSession:
        """``batch_size``: studies kept in flight (``auto``: twice vLLM's ``max_num_seqs``, so the scheduler
        always has work)."""
        self.check(settings)
        window = batch_size if isinstance(batch_size, int) else 2 * self.model.max_num_seqs
        return VllmSession(self.model, settings, window)

    def generate(self, samples: list[Sample], settings: GenerationSettings, *,
                 on_text: OnText | None = None) -> list[Report]:
        """One report per sample (all of them in flight at once); ``on_text`` streams a single sample."""
        self.check(settings)
        vm = self.model
        t0 = time.perf_counter()
        requests = []
        for i, s in enumerate(samples):
            cur = to_pixels(s.current, vm.image_processor, vm.pad_images)
            prior = to_pixels(s.prior, vm.image_processor, vm.pad_images) if vm.uses_prior and not s.dummy_prior \
                else None
            requests.append(Request(i, s, prompt_ids(vm, s), (cur, prior)))
        t_prep = time.perf_counter()
        session = VllmSession(vm, settings, max(len(requests), 1), on_text=on_text if len(samples) == 1 else None)
        session.submit(requests)
        reports: dict[int, Report] = {}
        while session.busy():
            for d in session.step():
                assert d.report is not None
                reports[d.request.key] = d.report
        out = [reports[i] for i in range(len(requests))]
        t = stage_timings(t0, t_prep, t_prep, time.perf_counter(),
                          sum(len(c.token_ids) for r in out for c in r.candidates))
        for r in out:
            r.timings = dict(t)
        return out


@dataclass
class VllmSession:
    """A batch run on vLLM: requests go in one at a time, up to ``window`` stay in flight."""

    vm: VllmModel
    settings: GenerationSettings
    window: int
    on_text: OnText | None = None
    plan_size: int = 1  # vLLM batches by itself, continuously
    in_flight: dict[str, tuple[Request, dict[str, Any]]] = field(default_factory=dict)
    chunk: list[tuple[Request, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.window = max(1, int(self.window))
        self.lookahead: int | None = min(self.window, PREFETCH_AHEAD)
        self.stop = get_template(self.vm.conv_mode).stop_string
        self.stop_ids, stop_strings = stop_ids(self.vm, self.stop)
        s = self.settings
        self.beams = s.num_beams > 1
        self.exact_beams = self.beams and not s.do_sample and not s.repetition_penalty and not stop_strings
        if self.beams and not self.exact_beams:
            warn_once("vllm-beams", "with sampling, --repetition-penalty or a stop string, --engine vllm runs vLLM's "
                                    "own beam search (no n-gram ban, other length normalisation): beams differ from "
                                    "--engine hf; see docs/engines.md")
        self._streamer: TextStreamer | None = None

    def has_room(self) -> bool:
        return len(self.chunk if self.beams else self.in_flight) < self.window

    def busy(self) -> bool:
        return bool(self.chunk or self.in_flight)

    def submit(self, batch: list[Request]) -> None:
        from vllm.sampling_params import RequestOutputKind

        engine = self.vm.llm.llm_engine
        for r in batch:
            prompt = request(self.vm, r.sample, r.images[0], r.images[1], r.prompt)
            if self.beams:
                self.chunk.append((r, prompt))
                continue
            params = sampling_params(self.vm, self.settings, self.stop)
            params.output_kind = RequestOutputKind.CUMULATIVE if self.on_text else RequestOutputKind.FINAL_ONLY
            rid = f"libra-{r.key}"
            engine.add_request(rid, engine_prompt(prompt), params)
            self.in_flight[rid] = (r, prompt)
            if self.on_text is not None:
                self._streamer = TextStreamer(self.vm, self.on_text)
                self._streamer.put(np.asarray(r.prompt.ids))  # the prompt: streamers skip it

    def step(self) -> list[Done]:
        """One engine step (streaming: what finished in it), or a whole chunk of beam searches."""
        return self._beam_chunk() if self.beams else self._stream_step()

    def _stream_step(self) -> list[Done]:
        done = []
        for out in self.vm.llm.llm_engine.step():
            if self._streamer is not None and out.outputs:
                new = list(out.outputs[0].token_ids)[len(self._streamer.ids):]
                if new:
                    self._streamer.put(np.asarray(new))
            if not out.finished:
                continue
            r, _ = self.in_flight.pop(out.request_id)
            cands = [(list(c.token_ids), c.cumulative_logprob) for c in out.outputs]
            done.append(Done(r, report(self.vm, r.sample, r.prompt, cands, self.settings)))
        return done

    def _beam_chunk(self) -> list[Done]:
        chunk, self.chunk = self.chunk, []
        all_cands = self._exact_beams(chunk) if self.exact_beams else self._native_beams(chunk)
        return [Done(r, report(self.vm, r.sample, r.prompt, cands, self.settings))
                for (r, _), cands in zip(chunk, all_cands, strict=True)]

    def _exact_beams(self, chunk: list[tuple[Request, dict[str, Any]]]) -> list[list[tuple[list[int], float]]]:
        from libra_cli.vllm_engine.beams import BeamStudy, beam_search

        s = self.settings
        studies = [BeamStudy(engine_prompt(p), np.asarray(p["libra_ids"], dtype=np.int64)) for _, p in chunk]
        return beam_search(self.vm.llm, studies, num_beams=s.num_beams, max_new_tokens=s.max_new_tokens,
                           length_penalty=s.length_penalty, no_repeat_ngram_size=s.ngram, stop_ids=self.stop_ids,
                           num_return_sequences=s.num_return_sequences)

    def _native_beams(self, chunk: list[tuple[Request, dict[str, Any]]]) -> list[list[tuple[list[int], float]]]:
        outs = self.vm.llm.beam_search([engine_prompt(p) for _, p in chunk], beam_params(self.settings))
        return [[(q.tokens[len(q.orig_prompt["prompt_token_ids"]):], float(q.cum_logprob))
                 for q in out.sequences[: self.settings.num_return_sequences]] for out in outs]
