"""What every engine takes and gives: studies and decoding settings in, reports out.

Engines (:mod:`libra_cli.engines`) import this module, never each other. It also renders a study
into the prompt ids every engine starts from (:func:`prompt_ids`), names the ids that stop
generation (:func:`stop_ids`) and turns answer ids into a :class:`Report` (:func:`make_report`),
so a report reads the same whichever engine wrote it.

Each decoding setting is defined once, here, with its help text in the field's metadata; the CLI's
``--max-new-tokens`` ... ``--ccd-labels`` flags are generated from these fields
(:mod:`libra_cli.commands.options`), so ``libra --help`` imports this module: it imports nothing
heavy at import time (prompt rendering imports its modules on first use).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from libra_cli.errors import InputError

if TYPE_CHECKING:
    from libra_cli.images import ImageProcessorConfig

DECODINGS = ("standard", "ccd")


def setting(default: Any = dataclasses.MISSING, help: str = "", *, panel: str = "",
            names: tuple[str, ...] = (), default_factory: Any = dataclasses.MISSING, **option: Any) -> Any:
    """A settings field with its help text: the one definition of a setting.

    The CLI flag is generated from it (``libra_cli.commands.options.flags_for``): ``--field-name``
    unless ``names`` are given, in the ``panel`` of ``--help``; ``option`` holds further
    ``typer.Option`` arguments (``min``). Environment variables are the CLI's business (options.py).
    """
    meta = {"help": help, "panel": panel, "names": names, "option": option}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


DEFAULT_MODEL = "X-iZhang/libra-v1.0-7b"


@dataclass(frozen=True)
class ModelSpec:
    """Which checkpoint to load and how: what every engine loads from (``checkpoint.load_model``'s arguments)."""

    model: str = setting(DEFAULT_MODEL, "Hub id (e.g. X-iZhang/libra-v1.0-7b) or checkpoint folder (full, LoRA or "
                         "projector-only).", names=("--model", "-m"))
    revision: str | None = setting(None, "Hub branch, tag or commit of --model (recorded in outputs).")
    model_base: str | None = setting(None, "Base model for LoRA / projector-only folders.")
    vision_tower: str | None = setting(None, "Override the encoder path or hub id from config.json.")
    conv_mode: str | None = setting(None, "Prompt template (default: the one the model was trained with).")
    dtype: str = setting("auto", "auto | bfloat16 | float16 | float32 (auto: checkpoint dtype on GPU; CPU: bfloat16 "
                         "where native, float32 where it fits).")
    device: str = setting("auto", "auto | cuda | cuda:N | mps | cpu.")
    attn: str = setting("auto", "auto | sdpa | eager | flash_attention_2.")
    load_4bit: bool = setting(False, "4-bit weights (bitsandbytes extra).")
    load_8bit: bool = setting(False, "8-bit weights (bitsandbytes extra).")
    jpeg_draft: bool = setting(False, "Decode large JPEGs at 1/2-1/8 scale (faster, NOT pixel-exact: up to a few "
                               "grey levels).")
    compile: bool = setting(False, "Greedy/sampling: static KV cache + compiled decode step (CUDA graphs on a GPU; "
                            "the first batch compiles).")
    compile_backend: str = setting("inductor", "torch.compile backend of --compile (eager: traces the step without "
                                   "generating code).")
    shared_prefix: bool = setting(True, "Beam search prefills the prompt once per sample and shares its KV cache "
                                  "across the beams (off: transformers' per-beam copies).",
                                  names=("--shared-prefix/--no-shared-prefix",))

    def load_kwargs(self) -> dict[str, Any]:
        """``checkpoint.load_model``'s keyword arguments."""
        return asdict(self)

    def with_model(self, model: str, revision: str | None = None) -> ModelSpec:
        return dataclasses.replace(self, model=model, revision=revision)


CCD_PANEL = "Clinical Contrastive Decoding (docs/decoding.md)"


@dataclass
class CCDSettings:
    """Clinical Contrastive Decoding (``libra_cli.ccd``): how the expert's labels steer decoding."""

    alpha: float = setting(0.5, "Weight of the guided prompt's log-probabilities, 0..1.")
    beta: float = setting(0.5, "Weight of the expert's token bias, 0..1.")
    gamma: float = setting(10.0, "Token bias clipped at +-log(gamma) (> 0; no clip at <= 1).")
    threshold: float = setting(0.5, "Labels at or above this probability go into the guidance sentence.")
    expert: str = setting("densenet", "densenet (torchxrayvision) | medsiglip | a CLIP/SigLIP folder or hub id.")
    labels: str | None = setting(None, "Label probabilities per study (JSON/JSONL/CSV) instead of the expert.")

    def validate(self) -> None:
        for name in ("alpha", "beta", "threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"--ccd-{name} must be in [0, 1]")
        if not self.gamma > 0:
            raise InputError("--ccd-gamma must be > 0 (the token bias is clipped at +-log gamma)")
        if self.labels is not None and not Path(self.labels).expanduser().is_file():
            raise InputError(f"--ccd-labels file '{self.labels}' does not exist; check the path")


CCD_FIELDS = tuple(f.name for f in dataclasses.fields(CCDSettings))


@dataclass
class GenerationSettings:
    """Decoding settings. ``temperature == 0`` means greedy (or beam search with ``num_beams > 1``).

    ``no_repeat_ngram_size=None`` follows the original: 3 with beam search, off otherwise (CCD: 3).
    CCD's own settings are ``ccd`` (:class:`CCDSettings`); ``GenerationSettings(ccd_labels=...)``
    and the other ``ccd_<name>`` keywords set them too, and :meth:`to_dict` records them by those names.
    """

    max_new_tokens: int = setting(512, "Maximum tokens to generate.")
    temperature: float = setting(0.0, "0 = greedy / beam search; > 0 samples.")
    top_p: float | None = setting(None, "Nucleus sampling mass.")
    top_k: int | None = setting(None, "Top-k sampling.")
    num_beams: int = setting(1, "Beam width (paper evaluation: 10).")
    length_penalty: float = setting(1.0, "Beam length penalty (paper: 2).")
    no_repeat_ngram_size: int | None = setting(None, "Default: 3 with beams (as the original), else off.")
    num_return_sequences: int = setting(1, "Candidates to return (with scores).")
    repetition_penalty: float | None = setting(None, "Repetition penalty.")
    seed: int | None = setting(None, "Random seed for sampling.")
    decoding: str = setting("standard", "standard | ccd (Clinical Contrastive Decoding: expert-guided).",
                            panel=CCD_PANEL)
    ccd: CCDSettings = setting(default_factory=CCDSettings, panel=CCD_PANEL)

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
            self.ccd.validate()
            if self.num_beams > 1 and self.do_sample:
                raise InputError("CCD beam search is deterministic: use --temperature 0 with --num-beams, or sample "
                                 "with one beam")

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    @property
    def ngram(self) -> int:
        """The n-gram size decoding blocks from repeating: as given, else 3 with beams (the original) or CCD
        (the reference's default), else 0 (off)."""
        if self.no_repeat_ngram_size is not None:
            return int(self.no_repeat_ngram_size)
        return 3 if self.num_beams > 1 or self.decoding == "ccd" else 0

    def to_dict(self) -> dict[str, Any]:
        """The settings as recorded with answers: flat ``ccd_<name>`` keys; standard decoding without the CCD
        fields (as before CCD); ``no_repeat_ngram_size`` as applied."""
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "ccd":
                d.update({f"ccd_{k}": v for k, v in asdict(self.ccd).items()})
            else:
                d[f.name] = getattr(self, f.name)
        d["no_repeat_ngram_size"] = self.ngram
        if self.decoding != "ccd":
            for k in [k for k in d if k.startswith("ccd_")] + ["decoding"]:
                del d[k]
        return d


def _flat_ccd_init(init: Callable[..., None]) -> Callable[..., None]:
    """``GenerationSettings(ccd_labels=..., ccd_alpha=...)``, as documented: the flat spellings set ``ccd``."""

    @functools.wraps(init)
    def __init__(self: GenerationSettings, *args: Any, **kwargs: Any) -> None:  # noqa: N807 - the class's own
        flat = {k[len("ccd_"):]: kwargs.pop(k) for k in list(kwargs) if k.startswith("ccd_") and k[4:] in CCD_FIELDS}
        init(self, *args, **kwargs)
        if flat:
            self.ccd = dataclasses.replace(self.ccd, **flat)

    return __init__


def _flat_ccd(name: str) -> property:
    return property(lambda self: getattr(self.ccd, name), doc=f"``ccd.{name}``, by the name answers record it under")


GenerationSettings.__init__ = _flat_ccd_init(GenerationSettings.__init__)  # type: ignore[method-assign]
for _name in CCD_FIELDS:  # read access by the flat names too
    setattr(GenerationSettings, f"ccd_{_name}", _flat_ccd(_name))


@dataclass
class Sample:
    """One request: current image, optional prior, the question and optional clinical context.

    Images may be paths, URLs, bytes, PIL images, already-preprocessed ``[3, H, W]`` arrays, or a
    zero-argument callable returning one of those (a lazy dataset cell, or an :class:`ImageFile`).
    """

    current: Any
    prior: Any | None = None
    query: str | None = None
    context: str | None = None
    id: str | None = None
    history: list[tuple[str, str]] | None = None

    @property
    def dummy_prior(self) -> bool:
        """No prior image: the current one stands in for it (the original's dummy prior)."""
        return prior_missing(self.prior)


def prior_missing(prior: Any) -> bool:
    return prior is None or (isinstance(prior, str) and not prior.strip())


@dataclass(frozen=True)
class ImageFile:
    """An image file already decoded (to check it): engines that take pixels call it for the image, engines
    that send the file itself (an OpenAI-compatible server) read ``path``."""

    path: str
    image: Any

    def __call__(self) -> Any:
        return self.image


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


class Model(Protocol):
    """What a request is rendered against: the prompt side of a loaded model, whichever engine runs it.

    ``checkpoint.LoadedModel`` (transformers) and ``engines.vllm.VllmModel`` are the two.
    """

    @property
    def name(self) -> str: ...
    @property
    def conv_mode(self) -> str: ...
    @property
    def info(self) -> dict[str, Any]: ...
    @property
    def config(self) -> Any: ...
    @property
    def tokenizer(self) -> Any: ...
    @property
    def image_processor(self) -> ImageProcessorConfig: ...
    @property
    def num_image_tokens(self) -> int: ...
    @property
    def pad_images(self) -> bool: ...
    @property
    def uses_prior(self) -> bool: ...
    @property
    def image_token_id(self) -> int: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...


class Prompt(NamedTuple):
    """A rendered study: the prompt text, its ids (one placeholder per image-feature vector), the stop string."""

    text: str
    ids: list[int]
    stop: str


def default_query(model: Model) -> str:
    """The question a model was trained to answer (the registry's, else the findings query)."""
    from libra_cli.checkpoint.registry import default_query as registry_query  # not at import: `libra --help`

    return registry_query(model.name)


def prompt_ids(model: Model, sample: Sample, guide: str | None = None) -> Prompt:
    """Rendered prompt, its ids (one placeholder per image-feature vector) and the stop string.

    ``guide``: CCD's guided prompt (the clinical guidance after the question).
    """
    from libra_cli.prompts import (  # not at import: `--help`
        build_prompt,
        expand_image_tokens,
        tokenize_with_image,
    )

    query = sample.query if sample.query is not None else default_query(model)
    if not query.strip():
        raise InputError("empty prompt; give a question with --prompt or leave it out for the findings query")
    text, stop = build_prompt(query, model.conv_mode, bool(getattr(model.config, "mm_use_im_start_end", False)),
                              sample.context, sample.history, guide)
    ids = tokenize_with_image(text, model.tokenizer, model.image_token_id, encode=model.encode)
    return Prompt(text, expand_image_tokens(ids, model.num_image_tokens, model.image_token_id), stop)


def stop_ids(model: Model, stop: str) -> tuple[list[int], list[str] | None]:
    """The ids that end an answer (EOS, and the template's stop token), and stop strings that are no token."""
    tok = model.tokenizer
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


def trim_at_eos(ids: list[int], eos_ids: list[int], pad_id: int | None) -> list[int]:
    """Cut at the first EOS (kept, as generate returns it) and drop trailing padding."""
    for k, t in enumerate(ids):
        if t in eos_ids:
            return ids[: k + 1]
    while ids and pad_id is not None and ids[-1] == pad_id:
        ids = ids[:-1]
    return ids


Answers = list[tuple[list[int], float | None]]  # one study's candidates: (token ids, score)


def stage_timings(t0: float, t_prep: float, t_enc: float, t_gen: float, new_tokens: int) -> dict[str, float]:
    """A report's ``timings``: preprocessing, image encoding and generation of its batch, and the token rate."""
    return {
        "preprocess_s": t_prep - t0,
        "encode_s": t_enc - t_prep,
        "generate_s": t_gen - t_enc,
        "total_s": t_gen - t0,
        "new_tokens": float(new_tokens),
        "tokens_per_s": new_tokens / max(t_gen - t_enc, 1e-9),
    }


def make_report(model: Model, sample: Sample, prompt: Prompt, answers: Answers, settings: GenerationSettings,
                ccd: dict[str, Any] | None = None) -> Report:
    """A study's report from its candidates' ids: decoded with the model's codec, the stop string dropped."""
    from libra_cli.prompts import strip_stop

    cands = [Candidate(strip_stop(model.decode(ids), prompt.stop), ids, score) for ids, score in answers]
    return Report(text=cands[0].text, prompt=prompt.text, token_ids=cands[0].token_ids, candidates=cands,
                  prior_is_dummy=sample.dummy_prior, settings=settings.to_dict(), id=sample.id, ccd=ccd)
