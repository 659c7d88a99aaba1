"""The batch run: plan, decode, encode once per image, generate on any engine, write as answers come back.

One runner for every engine (:mod:`libra_cli.engines`): it renders each prompt once (its length
buckets the plan), decodes images in background threads, asks the engine to encode each image
once (``encode_images``: encoder outputs for the in-process engines, the pixels themselves for
vLLM) and keeps the result until its last use, feeds planned batches to the engine's session
while it has room, and writes what comes back. Batch invariance comes from the engines: the
transformers engine left-pads and scatters each sample's image features into its own placeholders.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from libra_cli.atomic import naming, write_jsonl_atomic
from libra_cli.batch.images import EncoderCache, ImagePrefetcher, decode_image
from libra_cli.batch.inputs import ErrorRecord, ImageRef, Item, qid_key
from libra_cli.batch.output import AnswerWriter, answer_id, merge_shards, ordered_answers, read_lines
from libra_cli.batch.plan import (
    errors_path,
    launched_by_torchrun,
    plan_batches,
    shard_items,
    shard_path,
)
from libra_cli.checkpoint.load import LoadedModel
from libra_cli.engines.base import BatchEngine, Request, Session
from libra_cli.engines.registry import for_model
from libra_cli.errors import InputError, is_oom
from libra_cli.requests import GenerationSettings, Prompt, Report, Sample, default_query, prompt_ids

EXIT_SAMPLES_FAILED = 1


@dataclass
class RunStats:
    """What a run did (the summary table and the benchmark read this)."""

    total: int = 0
    resumed: int = 0
    answered: int = 0
    failed: int = 0
    input_errors: int = 0
    new_tokens: int = 0
    batches: int = 0
    batch_size: int = 0
    wall_s: float = 0.0
    model_s: float = 0.0
    image_wait_s: float = 0.0
    encoded_images: int = 0
    cache_hits: int = 0
    merged: bool | None = None
    failed_all_shards: int | None = None
    out: str = ""
    errors_out: str = ""

    @property
    def samples_per_s(self) -> float:
        return self.answered / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def image_wait_fraction(self) -> float:
        return self.image_wait_s / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.update(samples_per_s=self.samples_per_s, tokens_per_s=self.tokens_per_s,
                 image_wait_fraction=self.image_wait_fraction)
        return d

    @property
    def exit_failed(self) -> bool:
        """Whether this process should exit with ``EXIT_SAMPLES_FAILED``.

        Under torchrun/accelerate a rank that exits non-zero makes the launcher kill the other ranks,
        possibly before the last one merges; so launched ranks that did not merge exit 0 and the
        merging rank reports the failures of every shard. Shards started by hand report their own.
        """
        if self.merged:
            return bool(self.failed_all_shards)
        if self.merged is False and launched_by_torchrun():
            return False
        return self.failed > 0


def model_id_for(model: str) -> str:
    """The original's ``get_model_name_from_path``: last folder name (``parent_checkpoint-N`` for checkpoints)."""
    parts = str(model).rstrip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


class ErrorLog:
    """``<out>.errors.jsonl`` while the run goes (appended + fsynced); rewritten in input order at the end."""

    def __init__(self, path: Path, first: list[ErrorRecord]) -> None:
        self.path = path
        self.records: list[ErrorRecord] = []
        with naming(path):
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.add(first)

    def add(self, errs: list[ErrorRecord]) -> None:
        if not errs:
            return
        self.records += errs
        data = "".join(json.dumps(e.to_dict() | {"_index": e.index}, ensure_ascii=False) + "\n" for e in errs)
        with naming(self.path):
            os.write(self._fd, data.encode("utf-8"))
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def finish(self, keep_index: bool) -> None:
        """Input order; shard files keep ``_index`` so the merge can order them."""
        self.records.sort(key=lambda e: e.index)
        write_jsonl_atomic(self.path, [e.to_dict() | ({"_index": e.index} if keep_index else {})
                                       for e in self.records])


class BatchRunner:
    """Runs items through an engine in bucketed batches and writes answers as they finish.

    ``engine``: any :class:`~libra_cli.engines.base.BatchEngine` (``hf``, ``ccd``, ``vllm``), or a
    :class:`~libra_cli.checkpoint.LoadedModel`, which runs on the in-process engine its settings
    name (``ccd`` for ``decoding="ccd"``, else ``hf``). ``batch_size``: ``auto`` or a number, as the
    engine reads it (transformers: samples per forward; vLLM: studies in flight).
    """

    def __init__(self, engine: BatchEngine | LoadedModel, settings: GenerationSettings, *,
                 batch_size: int | str = "auto", workers: int = 2, prefetch: int = 2, cache_mb: int = 2048,
                 model_id: str | None = None, on_batch: Callable[[int, int], None] | None = None) -> None:
        self.engine = engine if isinstance(engine, BatchEngine) else for_model(engine, settings)
        self.model = self.engine.model
        self.settings = settings
        self.batch_size = batch_size
        self.workers = workers
        self.prefetch = max(1, prefetch)
        self.cache_bytes = cache_mb << 20
        self.model_id = model_id or model_id_for(self.model.name)
        self.on_batch = on_batch
        self.settings_dict = settings.to_dict()
        self.uses_prior = bool(self.model.uses_prior)
        self._prompt_failures = 0

    # -- public -------------------------------------------------------------------------------
    def run(self, items: list[Item], out: Path, input_errors: list[ErrorRecord] | None = None,
            overwrite: bool = False, order: list[str] | None = None, on_start: Callable[[int], None] | None = None,
            skip: set[str] | None = None, keep_error_index: bool = False) -> RunStats:
        """Answer every item not yet in ``out`` (nor in ``skip``); returns the run's stats.

        ``order``: question keys in input order for the final rewrite (default: ``items``' order).
        ``keep_error_index``: shard error files keep ``_index`` so the merge can order them.
        """
        t0 = time.perf_counter()
        out = Path(out)
        stats = RunStats(out=str(out), errors_out=str(errors_path(out)))
        writer = AnswerWriter(out, overwrite=overwrite)
        try:
            self._check_resume(writer, out)
        except InputError:
            writer.close()
            raise
        errors = ErrorLog(errors_path(out), list(input_errors or []))
        stats.input_errors = len(errors.records)
        stats.total = len(items) + stats.input_errors
        pending = [it for it in items if it.key not in writer.done and it.key not in (skip or set())]
        stats.resumed = len(items) - len(pending)
        samples, prompts = self._prepare(pending, errors)
        session = self.engine.session(self.settings, self.batch_size,
                                      max((len(p.ids) for p in prompts.values()), default=1), len(samples))
        stats.batch_size = session.window
        if on_start:
            on_start(len(samples))
        lengths = {i: len(p.ids) for i, p in prompts.items()}
        plan = plan_batches([it for it in pending if it.index in samples], lengths, session.plan_size)
        try:
            _Run(self, session, samples, prompts, writer, errors, stats).all(plan)
        finally:
            writer.close()
            errors.close()
        stats.failed += stats.input_errors + self._prompt_failures
        # final, atomic rewrite in input order: identical bytes whatever the batch size / resumes
        keys = order if order is not None else [it.key for it in sorted(items, key=lambda i: i.index)]
        write_jsonl_atomic(out, ordered_answers(keys, writer.done))
        errors.finish(keep_error_index)
        stats.wall_s = time.perf_counter() - t0
        return stats

    # -- steps --------------------------------------------------------------------------------
    def _check_resume(self, writer: AnswerWriter, out: Path) -> None:
        if not writer.done:
            return
        first = next(iter(writer.done.values()))
        prev = (first.get("metadata") or {}).get("settings")
        if first.get("model_id") != self.model_id or (prev is not None and prev != self.settings_dict):
            raise InputError(
                f"{out} holds answers from another model or other settings (model_id {first.get('model_id')!r}); "
                "use a new --out, or --overwrite to start again"
            )

    def _prepare(self, pending: list[Item], errors: ErrorLog) -> tuple[dict[int, Sample], dict[int, Prompt]]:
        """One :class:`~libra_cli.requests.Sample` per item and its prompt, rendered once (its length buckets it)."""
        samples: dict[int, Sample] = {}
        prompts: dict[int, Prompt] = {}
        bad: list[ErrorRecord] = []
        for it in pending:
            s = Sample(it.current.source, it.prior.source if it.prior is not None else None, it.query, it.context,
                       id=it.key)
            try:
                prompts[it.index] = prompt_ids(self.model, s)
            except InputError as exc:
                bad.append(ErrorRecord(it.index, it.question_id, "input", str(exc), it.where))
                continue
            samples[it.index] = s
        errors.add(bad)
        self._prompt_failures = len(bad)
        return samples, prompts

    def refs(self, it: Item) -> list[ImageRef]:
        """The images a study's answer depends on: the current, and the prior when the model reads it."""
        return [it.current] + ([it.prior] if self.uses_prior and it.prior is not None else [])

    def record(self, it: Item, rep: Report) -> dict[str, Any]:
        """One answers-file line."""
        meta: dict[str, Any] = {"settings": self.settings_dict, "conv_mode": self.model.conv_mode,
                                "prior_is_dummy": it.prior is None}
        for key in ("revision", "commit"):  # which weights wrote it (hub models)
            if self.model.info.get(key):
                meta[f"model_{key}"] = self.model.info[key]
        if self.settings.num_return_sequences > 1:
            meta["candidates"] = [{"text": c.text, "score": c.score} for c in rep.candidates]
        if it.reference is not None:
            meta["reference"] = it.reference
        if it.selection is not None:
            meta["study_selection"] = it.selection
        if self.model.info.get("engine"):  # an engine other than transformers wrote it
            meta["engine"] = self.model.info["engine"]
        return {
            "question_id": it.question_id,
            "prompt": it.query if it.query is not None else default_query(self.model),
            "text": rep.text,
            "answer_id": answer_id(self.model_id, it.question_id, self.settings_dict),
            "model_id": self.model_id,
            "metadata": meta,
        }


class _Run:
    """One run's loop: images decoded ahead and encoded once per image, planned batches fed to the engine's
    session while it has room, answers written as the session returns them."""

    def __init__(self, runner: BatchRunner, session: Session, samples: dict[int, Sample], prompts: dict[int, Prompt],
                 writer: AnswerWriter, errors: ErrorLog, stats: RunStats) -> None:
        self.r, self.session, self.samples, self.prompts = runner, session, samples, prompts
        self.writer, self.errors, self.stats = writer, errors, stats
        self.items: dict[int, Item] = {}
        self.in_flight: dict[int, Request] = {}
        self.bad_images: dict[str, str] = {}
        self.lookahead = session.lookahead if session.lookahead is not None else runner.prefetch

    def all(self, plan: list[list[Item]]) -> None:
        """Every planned batch; a batch that runs out of memory is split in half, with the rest of the plan."""
        uses: dict[str, int] = {}
        for it in (it for b in plan for it in b):
            self.items[it.index] = it
            for ref in self.r.refs(it):
                uses[ref.key] = uses.get(ref.key, 0) + 1
        self.cache = EncoderCache(uses, self.r.cache_bytes)
        self.pre = ImagePrefetcher(lambda src: decode_image(src, self.r.model), self.r.workers)
        queue = list(plan)
        try:
            for b in queue[: self.lookahead]:
                self._prefetch(b)
            bi = 0
            while bi < len(queue) or self.session.busy():
                if bi < len(queue) and (self.session.has_room() or not self.session.busy()):
                    for nb in queue[bi + 1: bi + 1 + self.lookahead]:
                        self._prefetch(nb)
                    self._submit(queue[bi])
                    bi += 1
                    continue
                try:
                    self._step()
                except Exception as exc:
                    failed = list(self.in_flight.values())
                    if is_oom(exc) and len(failed) > 1 and not self.session.busy():  # back off: split batch and rest
                        self._free_cuda()
                        half = max(1, len(failed) // 2)
                        rest = [self.items[r.key] for r in failed] + [it for b in queue[bi:] for it in b]
                        self.in_flight.clear()
                        queue = queue[:bi] + [rest[i: i + half] for i in range(0, len(rest), half)]
                        self.stats.batch_size = half
                        continue
                    raise
        finally:
            self.pre.close()
        self.stats.image_wait_s = self.pre.wait_s
        self.stats.cache_hits = self.cache.hits
        self.stats.encoded_images = self.cache.misses

    def _prefetch(self, batch: list[Item]) -> None:
        for it in batch:
            for ref in self.r.refs(it):
                if self.cache.get(ref.key) is None:
                    self.pre.submit(ref)

    def _submit(self, batch: list[Item]) -> None:
        """Encode the batch's images (decode errors -> sample errors) and hand the good samples to the engine."""
        t = time.perf_counter()
        good, errs = self._encode(batch)
        requests = [Request(it.index, self.samples[it.index], self.prompts[it.index],
                            (self.cache.get(it.current.key),
                             self.cache.get(it.prior.key) if self.r.refs(it)[1:] else None)) for it in good]
        for it in batch:
            for ref in self.r.refs(it):
                self.cache.used(ref.key)
        self.stats.model_s += time.perf_counter() - t
        if errs:
            self._flush([], errs, 0)
        if requests:
            self.session.submit(requests)
            self.in_flight.update((r.key, r) for r in requests)

    def _step(self) -> None:
        t = time.perf_counter()
        done = self.session.step()
        self.stats.model_s += time.perf_counter() - t
        records, errs, ntok = [], [], 0
        for d in done:
            it = self.items[d.request.key]
            self.in_flight.pop(d.request.key, None)
            if d.report is None:  # a sample the engine refused
                errs.append(ErrorRecord(it.index, it.question_id, "generate", d.error or "", it.where))
                continue
            ntok += sum(len(c.token_ids) for c in d.report.candidates)
            records.append(self.r.record(it, d.report))
        self._flush(records, errs, ntok)

    def _flush(self, records: list[dict[str, Any]], errs: list[ErrorRecord], ntok: int) -> None:
        if not records and not errs:
            return
        self.writer.append(records)
        self.errors.add(errs)
        self.stats.answered += len(records)
        self.stats.failed += len(errs)
        self.stats.new_tokens += ntok
        self.stats.batches += bool(records)
        if self.r.on_batch:
            self.r.on_batch(len(records) + len(errs), ntok)

    @staticmethod
    def _free_cuda() -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _encode(self, batch: list[Item]) -> tuple[list[Item], list[ErrorRecord]]:
        """Encode the batch's uncached images with the engine (decode errors -> sample errors); the good items."""
        todo: dict[str, Any] = {}
        for it in batch:
            for ref in self.r.refs(it):
                if ref.key in self.bad_images:
                    continue
                if ref.key in todo or self.cache.get(ref.key) is not None:
                    self.cache.hits += 1
                    continue
                try:
                    todo[ref.key] = self.pre.take(ref)
                except InputError as exc:
                    self.bad_images[ref.key] = str(exc)
                except Exception as exc:  # noqa: BLE001 - any decode failure is this sample's problem
                    self.bad_images[ref.key] = f"cannot load image: {type(exc).__name__}: {exc}"
        if todo:
            for k, e in zip(todo, self.r.engine.encode_images(list(todo.values())), strict=True):
                self.cache.put(k, e)
            self.cache.misses += len(todo)
        good, errs = [], []
        for it in batch:
            bad = next((self.bad_images[r.key] for r in self.r.refs(it) if r.key in self.bad_images), None)
            if bad:
                errs.append(ErrorRecord(it.index, it.question_id, "image", bad, it.where))
            else:
                good.append(it)
        return good, errs


def run_batch(runner: BatchRunner, items: list[Item], errors: list[ErrorRecord], out: str | Path, *,
              num_shards: int = 1, shard: int = 0, overwrite: bool = False,
              on_start: Callable[[int], None] | None = None, order: list[str] | None = None) -> RunStats:
    """One whole ``libra batch`` run: shard, resume, generate, and merge the shards when all are done.

    ``order``: every question key in input order, when ``items`` holds only some of them (``libra batch
    --dicomweb`` reads only the studies this shard still has to answer); default: ``items``' order.
    """
    out = Path(out)
    order = order if order is not None else [it.key for it in items]
    if num_shards == 1:
        stats = runner.run(items, out, errors, overwrite=overwrite, order=order, on_start=on_start)
        stats.merged = None
        return stats
    mine, my_errors = shard_items(items, errors, num_shards, shard)
    target = shard_path(out, num_shards, shard)
    marker = Path(str(target) + ".done")
    if overwrite and marker.exists():
        marker.unlink()
    skip = set() if overwrite else {qid_key(r["question_id"]) for r in read_lines(out)[0]} if out.exists() else set()
    stats = runner.run(mine, target, my_errors, overwrite=overwrite, order=[it.key for it in mine],
                       on_start=on_start, skip=skip, keep_error_index=True)
    marker.write_text(json.dumps({"answered": stats.answered, "failed": stats.failed}) + "\n")
    stats.failed_all_shards = merge_shards(out, num_shards, order)
    stats.merged = stats.failed_all_shards is not None
    if stats.merged:
        stats.out, stats.errors_out = str(out), str(errors_path(out))
    return stats
