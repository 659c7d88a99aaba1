"""The OpenAI-compatible judge engine: ``/v1/completions`` on any server (vLLM's own, ``libra serve``-style, TGI ...).

Prompts are sent as token ids (the judge's exact tokenisation and chat template, which a chat
endpoint would replace by the server's own), greedy, stopping at the judge's stop tokens. The
server batches the concurrent requests (vLLM: continuous batching with prefix caching). The reply's
token ids are used when the server returns them (vLLM: ``return_token_ids``), else its text is
tokenised again, which can differ from the server's ids where a tokeniser is not round-trip exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from libra_cli.errors import InputError
from libra_cli.metrics.judges.base import GenRequest, cut_at_stop


class OpenAIGenerator:
    """Completions from the server at ``url`` (``http://HOST:PORT/v1``), ``concurrency`` requests in flight."""

    name = "openai"

    def __init__(self, url: str, model_id: str, tokenizer: Any, concurrency: int = 16, api_key: str | None = None,
                 timeout: float = 600.0) -> None:
        try:
            from openai import OpenAI
        except ImportError as exc:
            raise InputError("--judge-engine openai needs the openai client: pip install openai") from exc
        import os

        self.client = OpenAI(base_url=url.rstrip("/"), api_key=api_key or os.environ.get("OPENAI_API_KEY") or "unused",
                             timeout=timeout, max_retries=2)
        self.url = url
        try:
            served = [m.id for m in self.client.models.list().data]
        except Exception as exc:  # noqa: BLE001 - connection errors vary
            raise InputError(f"no OpenAI-compatible server answers at {url} ({type(exc).__name__}); start one, e.g. "
                             "python -m vllm.entrypoints.openai.api_server --model JUDGE_FOLDER, or check --judge-url") from None
        if model_id in served:
            self.model = model_id
        elif len(served) == 1:
            self.model = served[0]
        else:
            raise InputError(f"the server at {url} serves {', '.join(served) or 'no model'}, not {model_id}; "
                             "pass --judge-model as the server names it")
        self.tokenizer = tokenizer
        self.concurrency = concurrency
        self.returned_ids = True

    def _one(self, prompt: Sequence[int], req: GenRequest) -> list[int]:
        extra: dict[str, Any] = {"stop_token_ids": list(req.eos), "ignore_eos": True, "skip_special_tokens": False,
                                 "return_token_ids": True}
        kw: dict[str, Any] = {"temperature": 0.0}
        if req.do_sample:
            kw = {"temperature": req.temperature, "top_p": req.top_p or 1.0}
            extra["top_k"] = req.top_k or -1
        res = self.client.completions.create(model=self.model, prompt=list(prompt), max_tokens=req.max_new_tokens,
                                             extra_body=extra, **kw)
        choice = res.choices[0]
        ids = getattr(choice, "token_ids", None) or (choice.model_extra or {}).get("token_ids")
        if ids is None:
            self.returned_ids = False
            ids = self.tokenizer.encode(choice.text, add_special_tokens=False)
            if choice.finish_reason == "stop" and req.eos:
                ids = list(ids) + [req.eos[0]]
        return cut_at_stop(ids, req)

    def generate(self, prompts: Sequence[Sequence[int]], requests: Sequence[GenRequest]) -> list[list[int]]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, prompts, requests))

    def close(self) -> None:
        self.client.close()
