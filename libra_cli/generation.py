"""Report generation: one function for single samples and batches (the CLI, batch and web UI call it).

Inputs are left-padded; image features are scattered into the embeddings of each sample's own
placeholders, so a sample's output does not depend on what else is in its batch. Images enter as
pixels, or already encoded (``encoder_outputs``, as transformers' LLaVA takes ``image_outputs``)
when a caller such as ``libra batch`` encodes each image once for many samples.
"""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from libra_cli.errors import InputError
from libra_cli.images import load_and_preprocess
from libra_cli.prompts import (
    DEFAULT_QUERY,
    build_prompt,
    expand_image_tokens,
    strip_stop,
    tokenize_with_image,
)

DECODINGS = ("standard", "ccd")


@dataclass
class GenerationSettings:
    """Decoding settings. ``temperature == 0`` means greedy (or beam search with ``num_beams > 1``).

    ``no_repeat_ngram_size=None`` follows the original: 3 with beam search, off otherwise.
    """

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int | None = None
    num_return_sequences: int = 1
    repetition_penalty: float | None = None
    seed: int | None = None
    # decoding: "standard" (transformers' generate) or "ccd" (Clinical Contrastive Decoding, libra_cli.ccd)
    decoding: str = "standard"
    ccd_alpha: float = 0.5  # weight of the guided stream in the soft guide
    ccd_beta: float = 0.5  # weight of the expert token bias in the final scores
    ccd_gamma: float = 10.0  # the bias is clipped at +-log(gamma) (when gamma > 1)
    ccd_threshold: float = 0.5  # labels at or above it go into the guidance sentence
    ccd_expert: str = "densenet"  # densenet | medsiglip | a CLIP/SigLIP folder or hub id
    ccd_labels: str | None = None  # label probabilities per study from a file (replaces the expert)

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError("--max-new-tokens must be at least 1")
        if self.temperature < 0:
            raise InputError("--temperature must be >= 0 (0 = greedy)")
        if self.num_beams < 1:
            raise InputError("--num-beams must be at least 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise InputError("--top-p must be in (0, 1]")
        if self.num_return_sequences < 1:
            raise InputError("--num-return-sequences must be at least 1")
        if self.num_return_sequences > 1 and self.num_beams < self.num_return_sequences and self.temperature == 0:
            raise InputError("--num-return-sequences > 1 needs --num-beams >= that number, or sampling (--temperature > 0)")
        if self.decoding not in DECODINGS:
            raise InputError(f"--decoding must be one of {', '.join(DECODINGS)}, not {self.decoding!r}")
        if self.decoding == "ccd":
            self._validate_ccd()

    def _validate_ccd(self) -> None:
        for name in ("alpha", "beta", "threshold"):
            if not 0 <= getattr(self, f"ccd_{name}") <= 1:
                raise InputError(f"--ccd-{name} must be in [0, 1]")
        if not self.ccd_gamma > 0:
            raise InputError("--ccd-gamma must be > 0 (the token bias is clipped at +-log gamma)")
        if self.num_beams > 1 and self.do_sample:
            raise InputError("CCD beam search is deterministic: use --temperature 0 with --num-beams, or sample with one beam")
        if self.ccd_labels is not None and not Path(self.ccd_labels).expanduser().is_file():
            raise InputError(f"--ccd-labels file '{self.ccd_labels}' does not exist; check the path")

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def hf_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``."""
        kw: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "num_beams": self.num_beams,
            "num_return_sequences": self.num_return_sequences,
            "use_cache": True,
        }
        if self.do_sample:
            kw["temperature"] = self.temperature
            kw["top_p"] = self.top_p if self.top_p is not None else 1.0
            kw["top_k"] = self.top_k if self.top_k is not None else 0
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        if self.num_beams > 1:
            kw["length_penalty"] = self.length_penalty
            kw["early_stopping"] = False
        ngram = self.no_repeat_ngram_size
        if ngram is None:
            ngram = 3 if self.num_beams > 1 else 0
        if ngram:
            kw["no_repeat_ngram_size"] = ngram
        if self.repetition_penalty:
            kw["repetition_penalty"] = self.repetition_penalty
        return kw

    def to_dict(self) -> dict[str, Any]:
        """The settings as recorded with answers (standard decoding: without the CCD fields, as before CCD)."""
        d = asdict(self)
        if self.decoding == "ccd":
            from libra_cli.ccd.run import ccd_ngram

            d["no_repeat_ngram_size"] = ccd_ngram(self)
            return d
        for k in [k for k in d if k.startswith("ccd_")] + ["decoding"]:
            del d[k]
        d["no_repeat_ngram_size"] = self.hf_kwargs().get("no_repeat_ngram_size", 0)
        return d


@dataclass
class Sample:
    """One request: current image, optional prior, the question and optional clinical context.

    Images may be paths, URLs, bytes, PIL images, already-preprocessed ``[3, H, W]`` arrays, or a
    zero-argument callable returning one of those (a lazy dataset cell).
    """

    current: Any
    prior: Any | None = None
    query: str | None = None
    context: str | None = None
    id: str | None = None
    history: list[tuple[str, str]] | None = None
    # the rendered prompt, kept so that a sample is tokenised once (batch planning, then generation)
    _rendered: tuple[int, tuple[str, list[int], str]] | None = field(default=None, repr=False, compare=False)


@dataclass
class Candidate:
    text: str
    token_ids: list[int]
    score: float | None = None


@dataclass
class Report:
    """What the model wrote for one sample, with the data needed to reproduce it."""

    text: str
    prompt: str
    token_ids: list[int]
    candidates: list[Candidate]
    prior_is_dummy: bool
    settings: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    id: str | None = None
    ccd: dict[str, Any] | None = None  # CCD only: the labels, the guidance sentence and the guided prompt

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["ccd"] is None:
            del d["ccd"]
        return d


@dataclass
class BatchInputs:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | None
    prompts: list[str]
    stop: str
    prior_is_dummy: list[bool]


def _pixels(image: Any, loaded: Any) -> np.ndarray:
    if callable(image) and not isinstance(image, (str, bytes, bytearray)):
        image = image()
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.dtype == np.float32:
        return image
    if isinstance(image, torch.Tensor) and image.dim() == 3:
        return image.float().cpu().numpy()
    return load_and_preprocess(image, loaded.image_processor, pad=loaded.pad_images)


def prompt_ids(loaded: Any, sample: Sample, guide: str | None = None) -> tuple[str, list[int], str]:
    """Rendered prompt, its ids (one placeholder per image-feature vector) and the stop string.

    ``guide``: CCD's guided prompt (the clinical guidance after the question); not cached.
    """
    if guide is None and sample._rendered is not None and sample._rendered[0] == id(loaded):
        return sample._rendered[1]
    query = sample.query if sample.query is not None else default_query(loaded)
    if not query.strip():
        raise InputError("empty prompt; give a question with --prompt or leave it out for the findings query")
    text, stop = build_prompt(query, loaded.conv_mode, bool(getattr(loaded.config, "mm_use_im_start_end", False)),
                              sample.context, sample.history, guide)
    ids = tokenize_with_image(text, loaded.tokenizer, encode=loaded.encode)
    out = (text, expand_image_tokens(ids, loaded.num_image_tokens), stop)
    if guide is None:
        sample._rendered = (id(loaded), out)
    return out


def default_query(loaded: Any) -> str:
    """The question a model was trained to answer (the registry's, else the findings query)."""
    from libra_cli.checkpoint.registry import lookup

    known = lookup(loaded.name)
    return known.default_query if known else DEFAULT_QUERY


def _prior_missing(prior: Any) -> bool:
    return prior is None or (isinstance(prior, str) and not prior.strip())


def prepare_batch(loaded: Any, samples: list[Sample], with_pixels: bool = True) -> BatchInputs:
    """Tokenise, left-pad and preprocess a list of samples.

    ``with_pixels=False`` skips image loading (the caller has the image features already).
    """
    rendered = [prompt_ids(loaded, s) for s in samples]
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    width = max(len(ids) for _, ids, _ in rendered)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, (_, ids, _) in enumerate(rendered):
        input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[i, width - len(ids):] = 1
    dummy = [_prior_missing(s.prior) for s in samples]
    pixel_values = None
    if with_pixels:
        pix = []
        for s, missing in zip(samples, dummy, strict=True):
            cur = _pixels(s.current, loaded)
            pix.append(np.stack([cur, cur if missing else _pixels(s.prior, loaded)]))
        pixel_values = torch.from_numpy(np.stack(pix))
    return BatchInputs(input_ids, mask, pixel_values, [r[0] for r in rendered], rendered[0][2], dummy)


def stop_ids(loaded: Any, stop: str) -> tuple[list[int], list[str] | None]:
    tok = loaded.tokenizer
    eos = tok.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    stop_strings = None
    if stop and stop != tok.eos_token:
        # one token lookup, not get_vocab(): that builds the whole vocabulary dict on every batch
        sid = tok.convert_tokens_to_ids(stop)
        if isinstance(sid, int) and sid != tok.unk_token_id:
            ids.append(int(sid))
        elif stop.strip():
            stop_strings = [stop]
    return ids, stop_strings


def encode_images(loaded: Any, pixels: list[Any]) -> torch.Tensor:
    """The encoder's output for preprocessed images (``[3, H, W]`` each): ``[N, L, P, D]`` on the model's device.

    Callers that see one image in many samples (``libra batch``) encode it once and pass the result
    to :func:`generate` as ``encoder_outputs``.
    """
    model = loaded.model
    dev = model.get_input_embeddings().weight.device
    pix = torch.from_numpy(np.stack([np.asarray(p, dtype=np.float32) for p in pixels]))
    with torch.inference_mode():
        return model.encode_images(pix.to(dev, loaded.dtype))


def _connect(loaded: Any, encoder_outputs: list[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
    """Per-sample encoder outputs (current, prior or None = dummy prior) -> LLM-space image features."""
    model = loaded.model
    cur = torch.stack([c for c, _ in encoder_outputs])
    prior = None
    if loaded.uses_prior:
        prior = torch.stack([c if p is None else p for c, p in encoder_outputs])
    return model.connect(cur, prior)


def generate(
    loaded: Any,
    samples: list[Sample],
    settings: GenerationSettings | None = None,
    streamer: Any = None,
    image_features: torch.Tensor | None = None,
    encoder_outputs: list[tuple[torch.Tensor, torch.Tensor | None]] | None = None,
) -> list[Report]:
    """Generate one report per sample (a batch).

    Images come from the samples, or precomputed: ``encoder_outputs`` (per sample, the current's and
    the prior's encoder output ``[L, P, D]`` from :func:`encode_images`; prior None = dummy prior), or
    ``image_features`` (connector output ``[B, P, H]``).
    """
    settings = settings or GenerationSettings()
    settings.validate()
    model = loaded.model
    t0 = time.perf_counter()
    precomputed = image_features is not None or encoder_outputs is not None
    batch = prepare_batch(loaded, samples, with_pixels=not precomputed)
    t_prep = time.perf_counter()
    dev = model.get_input_embeddings().weight.device
    with torch.inference_mode():
        if encoder_outputs is not None:
            if len(encoder_outputs) != len(samples):
                raise InputError(f"{len(encoder_outputs)} encoder outputs for {len(samples)} samples")
            image_features = _connect(loaded, encoder_outputs)
        elif image_features is None:
            image_features = model.get_image_features(batch.pixel_values.to(dev, loaded.dtype))
        t_enc = time.perf_counter()
        eos_ids, stop_strings = stop_ids(loaded, batch.stop)
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        extras: list[dict[str, Any]] | None = None
        if settings.decoding == "ccd":
            answers, extras = _decode_ccd(loaded, samples, settings, image_features, eos_ids, streamer)
        else:
            answers = _decode_standard(loaded, batch, settings, image_features, eos_ids, stop_strings, streamer)
    t_gen = time.perf_counter()
    reports = []
    new_tokens = 0
    for i, s in enumerate(samples):
        cands = []
        for ids, score in answers[i]:
            new_tokens += len(ids)
            cands.append(Candidate(strip_stop(loaded.decode(ids), batch.stop), ids, score))
        reports.append(Report(text=cands[0].text, prompt=batch.prompts[i], token_ids=cands[0].token_ids,
                              candidates=cands, prior_is_dummy=batch.prior_is_dummy[i], settings=settings.to_dict(),
                              id=s.id, ccd=extras[i] if extras is not None else None))
    timings = {
        "preprocess_s": t_prep - t0,
        "encode_s": t_enc - t_prep,
        "generate_s": t_gen - t_enc,
        "total_s": t_gen - t0,
        "new_tokens": float(new_tokens),
        "tokens_per_s": new_tokens / max(t_gen - t_enc, 1e-9),
    }
    for r in reports:
        r.timings = dict(timings)
    return reports


Answers = list[list[tuple[list[int], float | None]]]  # per sample: (token ids, score) per candidate


def _decode_standard(loaded: Any, batch: BatchInputs, settings: GenerationSettings, features: torch.Tensor,
                     eos_ids: list[int], stop_strings: list[str] | None, streamer: Any) -> Answers:
    """transformers' ``generate`` (greedy, sampling, beam search) on the left-padded batch."""
    model = loaded.model
    dev = model.get_input_embeddings().weight.device
    kw = settings.hf_kwargs()
    if stop_strings:
        kw.update(stop_strings=stop_strings, tokenizer=loaded.tokenizer)
    ids, mask = batch.input_ids.to(dev), batch.attention_mask.to(dev)
    decode_kw, attention = _decode_kwargs(loaded, settings, ids, mask, features)
    want_scores = settings.num_return_sequences > 1
    from libra_cli import beam_scores

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
        scores = _sequence_scores(model, out, settings, seqs)
    n = settings.num_return_sequences
    pad = loaded.tokenizer.pad_token_id
    return [[(trim_at_eos(seqs[i * n + j].tolist(), eos_ids, pad), scores[i * n + j] if scores is not None else None)
             for j in range(n)] for i in range(len(batch.prompts))]


def _decode_ccd(loaded: Any, samples: list[Sample], settings: GenerationSettings, features: torch.Tensor,
                eos_ids: list[int], streamer: Any) -> tuple[Answers, list[dict[str, Any]]]:
    """Clinical Contrastive Decoding (:mod:`libra_cli.ccd`); the stop token is not part of the answer."""
    from libra_cli.ccd.run import run_ccd

    results = run_ccd(loaded, samples, settings, features, lambda s, guide: prompt_ids(loaded, s, guide), eos_ids,
                      streamer)
    answers = [list(zip(r.decoded.sequences, r.decoded.scores, strict=True)) for r in results]
    extras = [{"labels": r.labels, "guide": r.guide, "guided_prompt": r.guided_prompt} for r in results]
    return answers, extras


def _decode_kwargs(loaded: Any, settings: GenerationSettings, ids: torch.Tensor, mask: torch.Tensor,
                   image_features: torch.Tensor) -> tuple[dict[str, Any], AbstractContextManager[Any]]:
    """How the decode loop runs (speed only; the tokens are the same): image features or a shared prefix, compile.

    - beam search: the prompt is prefilled once per sample and its KV cache shared by the beams
      (:mod:`libra_cli.model.shared_prefix`), unless ``LIBRA_SHARED_PREFIX=0`` or the model can't;
    - ``loaded.compile`` (``--compile``), greedy/sampling: a static KV cache and a ``torch.compile``d
      decode step (CUDA graphs on a GPU). The cache length is rounded up to 256, so prompts of
      similar length reuse one compiled graph.
    """
    from libra_cli.model import shared_prefix

    model = loaded.model
    if settings.num_beams > 1 and ids.shape[1] > 1 and os.environ.get("LIBRA_SHARED_PREFIX", "1") != "0" \
            and shared_prefix.supported(model):
        cache = shared_prefix.prefill_prefix(model, model.embed_multimodal(ids, image_features), mask)
        from libra_cli.model.modeling import cache_kwarg

        return {cache_kwarg(model): cache, "shared_prefix": cache}, shared_prefix.attention(model)
    kw: dict[str, Any] = {"image_features": image_features}
    if getattr(loaded, "compile", False) and settings.num_beams == 1:
        from transformers import CompileConfig

        cuda = ids.device.type == "cuda"
        backend = os.environ.get("LIBRA_COMPILE_BACKEND", "inductor")  # tests: "eager" traces without code generation
        cfg = CompileConfig(fullgraph=False, backend=backend, mode="reduce-overhead" if cuda and backend == "inductor" else None)
        cfg._compile_all_devices = not cuda or None  # transformers compiles on accelerators only unless told
        kw.update(cache_implementation="static", compile_config=cfg,
                  max_cache_len=-(-(ids.shape[1] + settings.max_new_tokens) // 256) * 256)
    return kw, nullcontext()


def trim_at_eos(ids: list[int], eos_ids: list[int], pad_id: int | None) -> list[int]:
    """Cut at the first EOS (kept, as generate returns it) and drop trailing padding."""
    for k, t in enumerate(ids):
        if t in eos_ids:
            return ids[: k + 1]
    while ids and pad_id is not None and ids[-1] == pad_id:
        ids = ids[:-1]
    return ids


def _sequence_scores(model: Any, out: Any, settings: GenerationSettings, seqs: torch.Tensor) -> list[float] | None:
    if getattr(out, "sequences_scores", None) is not None:
        return [float(x) for x in out.sequences_scores.cpu()]
    if getattr(out, "scores", None):
        trans = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True).cpu()
        trans = torch.where(torch.isfinite(trans), trans, torch.zeros_like(trans))
        return [float(x) for x in trans.sum(-1)]
    return None


def generate_report(
    loaded: Any,
    current: Any,
    prior: Any | None = None,
    query: str | None = None,
    context: str | None = None,
    settings: GenerationSettings | None = None,
    streamer: Any = None,
    history: list[tuple[str, str]] | None = None,
) -> Report:
    """Generate the report for one study (current image, optional prior)."""
    return generate(loaded, [Sample(current, prior, query, context, history=history)], settings, streamer)[0]
