"""The batch run: plan, decode, encode once per image, generate through the core, write as batches finish.

Batch invariance comes from the core: :func:`libra_cli.generation.generate` left-pads and scatters
each sample's image features into its own placeholders. Here each image's encoder output is
computed once (:func:`libra_cli.generation.encode_images`), cached until its last use, and handed
to ``generate`` per sample, which joins current and prior exactly as it does for pixels.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libra_cli.atomic import naming, write_jsonl_atomic
from libra_cli.batch.images import EncoderCache, ImagePrefetcher, decode_image
from libra_cli.batch.inputs import ErrorRecord, ImageRef, Item, qid_key
from libra_cli.batch.output import AnswerWriter, answer_id, merge_shards, ordered_answers, read_lines
from libra_cli.batch.plan import (
    auto_batch_size,
    errors_path,
    launched_by_torchrun,
    plan_batches,
    shard_items,
    shard_path,
)
from libra_cli.errors import InputError, is_oom

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
    """Runs items through the model in bucketed batches and writes answers as they finish."""

    def __init__(self, loaded: Any, settings: Any, *, batch_size: int | str = "auto", workers: int = 2,
                 prefetch: int = 2, cache_mb: int = 2048, model_id: str | None = None,
                 on_batch: Callable[[int, int], None] | None = None) -> None:
        self.loaded = loaded
        self.settings = settings
        self.batch_size = batch_size
        self.workers = workers
        self.prefetch = max(1, prefetch)
        self.cache_bytes = cache_mb << 20
        self.model_id = model_id or model_id_for(loaded.name)
        self.on_batch = on_batch
        self.settings_dict = settings.to_dict()
        self.uses_prior = bool(loaded.uses_prior)
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
        samples, lengths = self._prepare(pending, errors)
        stats.batch_size = bs = self._batch_size(lengths, len(samples))
        if on_start:
            on_start(len(samples))
        plan = plan_batches([it for it in pending if it.index in samples], lengths, bs)
        try:
            self._generate_all(plan, samples, writer, errors, stats)
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

    def _prepare(self, pending: list[Item], errors: ErrorLog) -> tuple[dict[int, Any], dict[int, int]]:
        """One :class:`~libra_cli.generation.Sample` per item, its prompt tokenised once (the length buckets it)."""
        from libra_cli.generation import Sample, prompt_ids

        samples: dict[int, Any] = {}
        lengths: dict[int, int] = {}
        bad: list[ErrorRecord] = []
        for it in pending:
            s = Sample(it.current.source, it.prior.source if it.prior is not None else None, it.query, it.context,
                       id=it.key)
            try:
                lengths[it.index] = len(prompt_ids(self.loaded, s)[1])
            except InputError as exc:
                bad.append(ErrorRecord(it.index, it.question_id, "input", str(exc), it.where))
                continue
            samples[it.index] = s
        errors.add(bad)
        self._prompt_failures = len(bad)
        return samples, lengths

    def _batch_size(self, lengths: dict[int, int], n: int) -> int:
        if self.batch_size == "auto":
            return int(auto_batch_size(self.loaded, self.settings, max(lengths.values(), default=1), n))
        return int(self.batch_size)

    def _refs(self, it: Item) -> list[ImageRef]:
        return [it.current] + ([it.prior] if self.uses_prior and it.prior is not None else [])

    def _generate_all(self, plan: list[list[Item]], samples: dict[int, Any], writer: AnswerWriter, errors: ErrorLog,
                      stats: RunStats) -> None:
        """Every planned batch in turn; an out-of-memory batch is split in half, with the rest of the plan."""
        uses: dict[str, int] = {}
        for it in (it for b in plan for it in b):
            for ref in self._refs(it):
                uses[ref.key] = uses.get(ref.key, 0) + 1
        cache = EncoderCache(uses, self.cache_bytes)
        pre = ImagePrefetcher(lambda src: decode_image(src, self.loaded), self.workers)
        bad_images: dict[str, str] = {}
        queue = list(plan)
        try:
            for b in queue[: self.prefetch]:
                self._submit(pre, cache, b)
            bi = 0
            while bi < len(queue):
                for nb in queue[bi + 1: bi + 1 + self.prefetch]:
                    self._submit(pre, cache, nb)
                try:
                    records, errs, ntok = self._run_batch(queue[bi], samples, pre, cache, bad_images, stats)
                except Exception as exc:
                    if is_oom(exc) and len(queue[bi]) > 1:  # back off: split this batch and the rest
                        self._free_cuda()
                        half = max(1, len(queue[bi]) // 2)
                        rest = [it for b in queue[bi:] for it in b]
                        queue = queue[:bi] + [rest[i: i + half] for i in range(0, len(rest), half)]
                        stats.batch_size = half
                        continue
                    raise
                writer.append(records)
                errors.add(errs)
                stats.answered += len(records)
                stats.failed += len(errs)
                stats.new_tokens += ntok
                stats.batches += 1
                if self.on_batch:
                    self.on_batch(len(records) + len(errs), ntok)
                bi += 1
        finally:
            pre.close()
        stats.image_wait_s = pre.wait_s
        stats.cache_hits = cache.hits
        stats.encoded_images = cache.misses

    def _submit(self, pre: ImagePrefetcher, cache: EncoderCache, batch: list[Item]) -> None:
        for it in batch:
            for ref in self._refs(it):
                if cache.get(ref.key) is None:
                    pre.submit(ref)

    @staticmethod
    def _free_cuda() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _encode(self, batch: list[Item], pre: ImagePrefetcher, cache: EncoderCache,
                bad_images: dict[str, str]) -> tuple[list[Item], list[ErrorRecord]]:
        """Encode the batch's uncached images (decode errors -> sample errors); returns the good items."""
        from libra_cli.generation import encode_images

        todo: dict[str, Any] = {}
        for it in batch:
            for ref in self._refs(it):
                if ref.key in bad_images:
                    continue
                if ref.key in todo or cache.get(ref.key) is not None:
                    cache.hits += 1
                    continue
                try:
                    todo[ref.key] = pre.take(ref)
                except InputError as exc:
                    bad_images[ref.key] = str(exc)
                except Exception as exc:  # noqa: BLE001 - any decode failure is this sample's problem
                    bad_images[ref.key] = f"cannot load image: {type(exc).__name__}: {exc}"
        if todo:
            for k, e in zip(todo, encode_images(self.loaded, list(todo.values())), strict=True):
                cache.put(k, e)
            cache.misses += len(todo)
        good, errs = [], []
        for it in batch:
            bad = next((bad_images[r.key] for r in self._refs(it) if r.key in bad_images), None)
            if bad:
                errs.append(ErrorRecord(it.index, it.question_id, "image", bad, it.where))
            else:
                good.append(it)
        return good, errs

    def _run_batch(self, batch: list[Item], samples: dict[int, Any], pre: ImagePrefetcher, cache: EncoderCache,
                   bad_images: dict[str, str], stats: RunStats) -> tuple[list[dict[str, Any]], list[ErrorRecord], int]:
        from libra_cli.generation import generate

        t = time.perf_counter()
        good, errs = self._encode(batch, pre, cache, bad_images)
        records: list[dict[str, Any]] = []
        ntok = 0
        if good:
            enc = [(cache.get(it.current.key), cache.get(it.prior.key) if self._refs(it)[1:] else None)
                   for it in good]
            try:
                reports = generate(self.loaded, [samples[it.index] for it in good], self.settings,
                                   encoder_outputs=enc)
            except InputError as exc:  # a sample the model refuses: isolate it
                if len(good) > 1:
                    raise
                errs.append(ErrorRecord(good[0].index, good[0].question_id, "generate", str(exc), good[0].where))
                reports, good = [], []
            ntok = int(reports[0].timings.get("new_tokens", 0)) if reports else 0
            records = [self._record(it, rep) for it, rep in zip(good, reports, strict=True)]
        for it in batch:
            for ref in self._refs(it):
                cache.used(ref.key)
        stats.model_s += time.perf_counter() - t
        return records, errs, ntok

    def _record(self, it: Item, rep: Any) -> dict[str, Any]:
        from libra_cli.generation import default_query

        meta: dict[str, Any] = {"settings": self.settings_dict, "conv_mode": self.loaded.conv_mode,
                                "prior_is_dummy": it.prior is None}
        for key in ("revision", "commit"):  # which weights wrote it (hub models)
            if self.loaded.info.get(key):
                meta[f"model_{key}"] = self.loaded.info[key]
        if self.settings.num_return_sequences > 1:
            meta["candidates"] = [{"text": c.text, "score": c.score} for c in rep.candidates]
        if it.reference is not None:
            meta["reference"] = it.reference
        if it.selection is not None:
            meta["study_selection"] = it.selection
        return {
            "question_id": it.question_id,
            "prompt": it.query if it.query is not None else default_query(self.loaded),
            "text": rep.text,
            "answer_id": answer_id(self.model_id, it.question_id, self.settings_dict),
            "model_id": self.model_id,
            "metadata": meta,
        }


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
