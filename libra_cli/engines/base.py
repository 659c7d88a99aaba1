"""The contract every engine keeps: typed protocols, no base class to inherit from.

An engine generates reports for studies (:class:`Engine`: what ``libra infer`` and ``libra serve``
call). Engines that render prompts themselves from a :class:`~libra_cli.requests.Model` also run
``libra batch`` (:class:`BatchEngine`): the one :class:`~libra_cli.batch.BatchRunner` hands them
planned batches of :class:`Request` through a :class:`Session` and writes what comes back. The
shape follows vLLM's engine loop (add requests, step, collect what finished): an engine that
generates a whole batch in one call uses :class:`SyncSession`; vLLM keeps a window of requests
in flight. Engines are registered by name in :mod:`libra_cli.engines.registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from libra_cli.errors import InputError
from libra_cli.requests import GenerationSettings, Model, Prompt, Report, Sample

OnText = Callable[[str], None]  # streaming: called with the answer so far, each time it grows


@runtime_checkable
class Engine(Protocol):
    """Generates reports for studies (single or batched, streamed or not)."""

    name: ClassVar[str]  # the registered name (libra_cli.engines.registry)

    @property
    def conv_mode(self) -> str:
        """The prompt template the reports are rendered with (what outputs record)."""
        ...

    def check(self, settings: GenerationSettings) -> None:
        """Raise a one-line ``InputError`` when ``settings`` cannot run on this engine."""
        ...

    def generate(self, samples: list[Sample], settings: GenerationSettings, *,
                 on_text: OnText | None = None) -> list[Report]:
        """One report per sample; ``on_text`` streams the answer so far (one sample, one candidate)."""
        ...


@runtime_checkable
class BatchEngine(Engine, Protocol):
    """An engine that renders prompts from a model's prompt side, and so runs ``libra batch``."""

    model: Model

    def encode_images(self, pixels: list[Any]) -> list[Any]:
        """Preprocessed images (float32 ``[3, H, W]``) -> what a :class:`Request` carries for each: encoder
        outputs where the engine can take them (the runner keeps them per image until their last use),
        else the pixels themselves."""
        ...

    def session(self, settings: GenerationSettings, batch_size: int | str, max_prompt_len: int,
                n: int) -> Session:
        """A batch run's session; ``batch_size`` is the user's (``auto`` or a number), for ``n`` studies."""
        ...


@dataclass
class Request:
    """One study of a batch run: the sample, its rendered prompt and its images (``encode_images``' outputs)."""

    key: int
    sample: Sample
    prompt: Prompt
    images: tuple[Any, Any | None]  # current, prior (None: a dummy prior, or a model without one)


@dataclass
class Done:
    """A finished request: its report, or why the engine refused the sample."""

    request: Request
    report: Report | None = None
    error: str | None = None


@runtime_checkable
class Session(Protocol):
    """One batch run on an engine: submit planned batches while there is room, step to get what finished."""

    plan_size: int  # studies per planned batch (the runner buckets them by prompt length)
    window: int  # studies in flight at most (the run's batch size, as reported)
    lookahead: int | None  # planned batches whose images are decoded ahead (None: the runner's choice)

    def has_room(self) -> bool: ...
    def submit(self, batch: list[Request]) -> None: ...
    def step(self) -> list[Done]: ...
    def busy(self) -> bool: ...


@dataclass
class SyncSession:
    """A session for engines that generate a whole batch in one call: one planned batch in flight.

    A sample the engine refuses (``InputError``) is isolated when it is alone in its batch; in a
    larger batch the error ends the run (the same prompt rules apply to every sample).
    """

    run: Callable[[list[Request]], list[Report]]
    plan_size: int
    lookahead: int | None = None
    queued: list[Request] = field(default_factory=list)

    @property
    def window(self) -> int:
        return self.plan_size

    def has_room(self) -> bool:
        return not self.queued

    def submit(self, batch: list[Request]) -> None:
        self.queued.extend(batch)

    def busy(self) -> bool:
        return bool(self.queued)

    def step(self) -> list[Done]:
        batch, self.queued = self.queued, []
        try:
            reports = self.run(batch)
        except InputError as exc:
            if len(batch) > 1:
                raise
            return [Done(batch[0], error=str(exc))]
        return [Done(r, rep) for r, rep in zip(batch, reports, strict=True)]
