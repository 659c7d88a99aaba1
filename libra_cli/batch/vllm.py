"""``libra batch --engine vllm``: the batch runner with vLLM's continuous batching inside.

Everything around generation is :class:`libra_cli.batch.BatchRunner`'s: inputs, resume, the
crash-safe answers file, the errors file, shards, the final ordered rewrite and the stats. What
differs is the middle: images are decoded in background threads as today, and every study is
handed to vLLM's engine as soon as its pixels are ready; the engine keeps up to ``window``
requests in flight (continuous batching, paged KV cache, prefix caching), and each answer is
appended to the answers file when its request finishes.

Beam search goes through ``LLM.beam_search`` (vLLM runs it outside the engine loop) in chunks of
``window`` studies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from libra_cli.batch.images import ImagePrefetcher, decode_image
from libra_cli.batch.inputs import ErrorRecord, Item
from libra_cli.batch.runner import BatchRunner, RunStats
from libra_cli.console import warn_once
from libra_cli.errors import InputError
from libra_cli.generation import stop_ids
from libra_cli.vllm_engine import engine as E
from libra_cli.vllm_engine.available import require_vllm

PREFETCH_AHEAD = 64  # studies decoded ahead of the engine (a 518 px pair is ~6 MB of float32 pixels)


class VllmBatchRunner(BatchRunner):
    """:class:`BatchRunner` whose generation runs in vLLM (``window`` = requests kept in flight)."""

    def __init__(self, vm: E.VllmModel, settings: Any, *, window: int = 256, workers: int = 2,
                 model_id: str | None = None, on_batch: Callable[[int, int], None] | None = None) -> None:
        super().__init__(vm, settings, batch_size=window, workers=workers, cache_mb=0, model_id=model_id,
                         on_batch=on_batch)
        from libra_cli.prompts import get_template

        self.vm = vm
        self.window = max(1, int(window))
        self.stop = get_template(vm.conv_mode).stop_string
        self._writer: Any = None
        self.stop_ids, stop_strings = stop_ids(vm, self.stop)
        self.exact_beams = settings.num_beams > 1 and not settings.do_sample and not settings.repetition_penalty \
            and not stop_strings
        if settings.num_beams > 1 and not self.exact_beams:
            warn_once("vllm-beams", "with sampling, --repetition-penalty or a stop string, --engine vllm runs vLLM's "
                                    "own beam search (no n-gram ban, other length normalisation): beams differ from "
                                    "--engine hf; see docs/engines.md")

    def _batch_size(self, lengths: dict[int, int], n: int) -> int:
        return self.window

    def _generate_all(self, plan: list[list[Item]], samples: dict[int, Any], writer: Any, errors: Any,
                      stats: RunStats) -> None:
        items = [it for b in plan for it in b]
        self._writer = writer
        pre = ImagePrefetcher(lambda src: decode_image(src, self.vm), self.workers)
        try:
            ready = self._requests(items, samples, pre, errors, stats)
            if self.settings.num_beams > 1:
                self._beam_search(ready, writer, stats)
            else:
                self._stream(ready, writer, stats)
        finally:
            pre.close()
        stats.image_wait_s = pre.wait_s

    # -- inputs ---------------------------------------------------------------------------------
    def _requests(self, items: list[Item], samples: dict[int, Any], pre: ImagePrefetcher, errors: Any,
                  stats: RunStats) -> Iterator[tuple[Item, dict[str, Any]]]:
        """(item, vLLM prompt) in plan order; images decode a few studies ahead; bad images -> errors file."""
        ahead = min(self.window, PREFETCH_AHEAD)
        for it in items[:ahead]:
            self._submit_images(pre, it)
        for i, it in enumerate(items):
            if i + ahead < len(items):
                self._submit_images(pre, items[i + ahead])
            try:
                cur = pre.take(it.current)
                prior = pre.take(it.prior) if self.uses_prior and it.prior is not None else None
            except InputError as exc:
                self._fail(it, "image", str(exc), errors, stats)
                continue
            except Exception as exc:  # noqa: BLE001 - any decode failure is this sample's problem
                self._fail(it, "image", f"cannot load image: {type(exc).__name__}: {exc}", errors, stats)
                continue
            stats.encoded_images += 1 + (prior is not None)
            yield it, E.request(self.vm, samples[it.index], cur, prior)

    def _submit_images(self, pre: ImagePrefetcher, it: Item) -> None:
        pre.submit(it.current)
        if self.uses_prior and it.prior is not None:
            pre.submit(it.prior)

    def _fail(self, it: Item, kind: str, msg: str, errors: Any, stats: RunStats) -> None:
        errors.add([ErrorRecord(it.index, it.question_id, kind, msg, it.where)])
        stats.failed += 1
        if self.on_batch:
            self.on_batch(1, 0)

    # -- generation -----------------------------------------------------------------------------
    def _stream(self, ready: Iterator[tuple[Item, dict[str, Any]]], writer: Any, stats: RunStats) -> None:
        """Keep ``window`` requests in the engine; write each answer as its request finishes."""
        from vllm.sampling_params import RequestOutputKind

        engine = self.vm.llm.llm_engine
        in_flight: dict[str, tuple[Item, dict[str, Any]]] = {}
        source = iter(ready)
        exhausted = False
        t = time.perf_counter()
        while True:
            while not exhausted and len(in_flight) < self.window:
                nxt = next(source, None)
                if nxt is None:
                    exhausted = True
                    break
                it, prompt = nxt
                params = E.sampling_params(self.vm, self.settings, self.stop)
                params.output_kind = RequestOutputKind.FINAL_ONLY
                rid = f"libra-{it.index}"
                engine.add_request(rid, E.engine_prompt(prompt), params)
                in_flight[rid] = (it, prompt)
            if not in_flight:
                break
            finished = [o for o in engine.step() if o.finished]
            records, ntok = [], 0
            for out in finished:
                it, prompt = in_flight.pop(out.request_id)
                cands = [(list(c.token_ids), c.cumulative_logprob) for c in out.outputs]
                rep = self._report(it, prompt, cands)
                ntok += len(rep.token_ids)
                records.append(self._record(it, rep))
            self._flush(records, ntok, stats)
        stats.model_s += time.perf_counter() - t

    def _beam_search(self, ready: Iterator[tuple[Item, dict[str, Any]]], writer: Any, stats: RunStats) -> None:
        """Beam search in chunks of ``window`` studies: transformers' algorithm on vLLM (:mod:`~libra_cli.vllm_engine.beams`),
        or vLLM's own where that cannot be exact."""
        chunk: list[tuple[Item, dict[str, Any]]] = []

        def run() -> None:
            t = time.perf_counter()
            all_cands = self._exact_beams(chunk) if self.exact_beams else self._native_beams(chunk)
            records, ntok = [], 0
            for (it, prompt), cands in zip(chunk, all_cands, strict=True):
                rep = self._report(it, prompt, cands)
                ntok += len(rep.token_ids)
                records.append(self._record(it, rep))
            stats.model_s += time.perf_counter() - t
            self._flush(records, ntok, stats)
            chunk.clear()

        for pair in ready:
            chunk.append(pair)
            if len(chunk) >= self.window:
                run()
        if chunk:
            run()

    def _exact_beams(self, chunk: list[tuple[Item, dict[str, Any]]]) -> list[list[tuple[list[int], float]]]:
        from libra_cli.vllm_engine.beams import BeamStudy, beam_search

        s = self.settings
        studies = [BeamStudy(E.engine_prompt(p), np.asarray(p["libra_ids"], dtype=np.int64)) for _, p in chunk]
        return beam_search(self.vm.llm, studies, num_beams=s.num_beams, max_new_tokens=s.max_new_tokens,
                           length_penalty=s.length_penalty, no_repeat_ngram_size=s.hf_kwargs().get("no_repeat_ngram_size", 0),
                           stop_ids=self.stop_ids, num_return_sequences=s.num_return_sequences)

    def _native_beams(self, chunk: list[tuple[Item, dict[str, Any]]]) -> list[list[tuple[list[int], float]]]:
        outs = self.vm.llm.beam_search([E.engine_prompt(p) for _, p in chunk],
                                       E.beam_params(self.settings))
        return [[(q.tokens[len(q.orig_prompt["prompt_token_ids"]):], float(q.cum_logprob))
                 for q in out.sequences[: self.settings.num_return_sequences]] for out in outs]

    def _report(self, it: Item, prompt: dict[str, Any], cands: list[tuple[list[int], float | None]]) -> Any:
        return E.report(self.vm, self._sample(it), prompt["prompt"], self.stop, cands,
                        it.prior is None, self.settings)

    def _record(self, it: Item, rep: Any) -> dict[str, Any]:
        rec = super()._record(it, rep)
        rec["metadata"]["engine"] = "vllm"
        return rec

    @staticmethod
    def _sample(it: Item) -> Any:
        from libra_cli.generation import Sample

        return Sample(it.current.source, it.prior.source if it.prior is not None else None, it.query, it.context,
                      id=it.key)

    def _flush(self, records: list[dict[str, Any]], ntok: int, stats: RunStats) -> None:
        if not records:
            return
        self._writer.append(records)
        stats.answered += len(records)
        stats.new_tokens += ntok
        stats.batches += 1
        if self.on_batch:
            self.on_batch(len(records), ntok)


def vllm_batch_runner(model: str, settings: Any, batch_size: int | str, workers: int, model_id: str | None,
                      on_batch: Any, *, num_shards: int = 1, shard: int = 0, vision_tower: str | None = None,
                      conv_mode: str | None = None, dtype: str = "auto", options: Any = None,
                      quiet: bool = False) -> VllmBatchRunner:
    """Start vLLM on ``model`` and return the ``libra batch`` runner that uses it.

    ``batch_size`` is the number of studies kept in flight (``auto``: twice vLLM's ``max_num_seqs``,
    so the scheduler always has work). With several shards on one machine, each shard gets its own
    GPU(s) through ``CUDA_VISIBLE_DEVICES`` (one vLLM instance per shard: data parallelism).
    """
    import contextlib
    import os

    from libra_cli.console import err_console

    require_vllm()
    options = options or E.VllmOptions()
    if num_shards > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        import torch

        if torch.cuda.is_available():
            per = options.tensor_parallel_size * options.pipeline_parallel_size
            first = (int(os.environ.get("LOCAL_RANK", shard)) * per) % max(torch.cuda.device_count(), 1)
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + i) for i in range(per))
    status = contextlib.nullcontext() if quiet else err_console().status(f"starting vLLM on {model} ...")
    with status:
        vm = E.load_vllm_model(model, vision_tower=vision_tower, conv_mode=conv_mode, dtype=dtype, options=options)
    window = batch_size if isinstance(batch_size, int) else 2 * vm.max_num_seqs
    return VllmBatchRunner(vm, settings, window=window, workers=workers, model_id=model_id, on_batch=on_batch)
