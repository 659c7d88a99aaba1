"""The two seams of the LLM-judged metrics: a judge (prompt, settings, parser) and a text generator (engine).

A judge turns (reference, prediction) pairs into prompt token ids and per-pair generation
requests, and a generated row back into a score, exactly as its package does. A text generator
runs token ids through a causal LM (transformers, vLLM, or an OpenAI-compatible server) and returns
the generated ids. Judges are text-only; libra's multimodal report engines are not used here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class JudgeModel:
    """A published judge checkpoint and the dtype its package loads it in."""

    repo_id: str
    dtype: str


@dataclass(frozen=True)
class GenRequest:
    """How one prompt is decoded: greedy unless ``do_sample``; stops at any of ``eos`` or after ``max_new_tokens``."""

    max_new_tokens: int
    eos: tuple[int, ...]
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def key(self) -> str:
        """What the per-pair cache keys on besides the prompt."""
        return f"new={self.max_new_tokens}|eos={list(self.eos)}|sample={self.do_sample}|t={self.temperature}|" \
               f"k={self.top_k}|p={self.top_p}"


@dataclass
class JudgeResult:
    """One pair's judgement: the score (None: unparsable, as the package leaves it), details, parse status."""

    score: float | None
    details: dict[str, Any] = field(default_factory=dict)
    parsed: bool = True


class Judge(Protocol):
    """An LLM-judged metric, equal to its package: prompts in, score out."""

    name: str
    metric: str
    models: dict[str, JudgeModel]
    default_model: str
    tokenizer_kwargs: dict[str, Any]

    def prepare_tokenizer(self, tokenizer: Any) -> Any: ...

    def prompt_ids(self, tokenizer: Any, refs: Sequence[str], hyps: Sequence[str], model_id: str) -> list[list[int]]: ...

    def requests(self, prompts: Sequence[Sequence[int]], tokenizer: Any, generation_config: Any) -> list[GenRequest]: ...

    def response(self, tokenizer: Any, prompt: Sequence[int], generated: Sequence[int]) -> str: ...

    def score(self, response: str) -> JudgeResult: ...


class TextGenerator(Protocol):
    """A causal LM behind token ids: ``generate`` returns each prompt's generated ids (stop token included)."""

    name: str

    def generate(self, prompts: Sequence[Sequence[int]], requests: Sequence[GenRequest]) -> list[list[int]]: ...

    def close(self) -> None: ...


def cut_at_stop(ids: Sequence[int], request: GenRequest) -> list[int]:
    """``ids`` up to and including the first stop token, at most ``max_new_tokens`` long."""
    out: list[int] = []
    for t in list(ids)[:request.max_new_tokens]:
        out.append(int(t))
        if t in request.eos:
            break
    return out
