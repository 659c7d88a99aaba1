"""``libra batch --dicomweb``: studies from a PACS through the batch runner, and their FHIR / SR reports.

The study list (``--studies FILE`` or ``--since DATE``) is the input, one question per study
(``question_id`` = StudyInstanceUID, in list order). The run itself is :func:`libra_cli.batch.run_batch`:
the same sharding (position ``i % N == k``), crash-safe answers file, resume and merge. Before it, only
this shard's studies that are not finished are looked up on the server (in ``--workers`` threads): a
finished study (answered, and every requested report written) costs nothing on a rerun. Images are
fetched by the runner's background workers, each within the ``--dicomweb-timeout`` deadline.

After the run, each answered study gets its reports (``--fhir DIR/<uid>.json``, ``--sr DIR/<uid>.dcm``,
``--stow``), each written atomically and logged (appended + fsynced) in ``<out>.reports.jsonl``, so a
rerun writes only the missing ones. A study that cannot be used (not on the server, no frontal image,
unreadable) becomes a line of ``<out>.errors.jsonl``; a server that is down, too slow or refusing the
credentials stops the run before the model loads (exit 2, nothing written).
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libra_cli.atomic import naming
from libra_cli.batch.inputs import ErrorRecord, ImageRef, Item
from libra_cli.batch.plan import shard_path
from libra_cli.batch.runner import RunStats, run_batch
from libra_cli.errors import InputError
from libra_cli.pacs.client import DicomwebClient, StudyError, connect
from libra_cli.pacs.outputs import ReportSource, ReportTargets
from libra_cli.pacs.study import (
    Resolved,
    Studies,
    fetch_instance,
    is_uid,
    parse_prior,
    resolve,
    studies_since,
)


def read_study_list(path: Path) -> tuple[list[tuple[int, str, str]], list[ErrorRecord]]:
    """``--studies FILE``: ``UID`` or ``UID PRIOR`` per line (comma, tab or space; ``#`` comments; a header line).

    Returns ``[(index, study, prior)]`` (prior: auto | none | a UID | "" = the ``--prior`` flag) and the bad
    lines as error records; ``index`` is the position in the list, bad lines included.
    """
    if not path.is_file():
        raise InputError(f"--studies {path} does not exist; give a file of StudyInstanceUIDs, one per line")
    entries: list[tuple[int, str, str]] = []
    errors: list[ErrorRecord] = []
    seen: dict[str, int] = {}
    index = 0
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        parts = [p for p in re.split(r"[,\s]+", line.split("#", 1)[0].strip()) if p]
        if not parts:
            continue
        where = f"{path.name}:{lineno}"
        if not is_uid(parts[0]):
            if not entries and not errors:  # a header line ("StudyInstanceUID,prior")
                continue
            errors.append(ErrorRecord(index, parts[0], "input", f"{parts[0]!r} is not a StudyInstanceUID", where))
        elif parts[0] in seen:
            errors.append(ErrorRecord(index, parts[0], "input", f"study listed twice (first at line {seen[parts[0]]})",
                                      where))
        else:
            try:
                prior = parse_prior(parts[1]) if len(parts) > 1 else ""
            except InputError as exc:
                errors.append(ErrorRecord(index, parts[0], "input", str(exc).replace("--prior", "prior"), where))
            else:
                seen[parts[0]] = lineno
                entries.append((index, parts[0], prior))
                index += 1
                continue
        index += 1
    return entries, errors


def _lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a file, read only (the runner owns truncating a torn tail)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    out = []
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _answers(path: Path) -> dict[str, dict[str, Any]]:
    """question_id -> answer of an answers file."""
    out: dict[str, dict[str, Any]] = {}
    for rec in _lines(path):
        if "question_id" in rec:
            out.setdefault(str(rec["question_id"]), rec)
    return out


def reports_log(out: Path, num_shards: int, shard: int) -> Path:
    """``<out>.reports.jsonl``; ``<out>.reports.shard-0k-of-0N.jsonl`` in sharded runs (one file per process)."""
    tail = "" if num_shards == 1 else f".shard-{shard:02d}-of-{num_shards:02d}"
    return out.with_name(f"{out.name}.reports{tail}.jsonl")


@dataclass
class DicomwebBatch:
    """The studies of one ``libra batch --dicomweb`` process, resolved, and what to do after the run."""

    client: DicomwebClient
    targets: ReportTargets
    order: list[str]
    items: list[Item]
    errors: list[ErrorRecord]
    resolved: dict[str, Resolved]
    skipped: int
    log: Path
    say: Callable[[str], None] = print
    quiet: bool = False
    report_stats: dict[str, Any] = field(default_factory=dict)

    def run(self, runner: Any, items: list[Item], errors: list[ErrorRecord], out: str | Path, **kwargs: Any) -> RunStats:
        """:func:`~libra_cli.batch.run_batch` over the resolved studies, then the reports of the answered ones."""
        if kwargs.get("overwrite"):
            for p in Path(out).parent.glob(Path(out).name + ".reports*.jsonl"):
                p.unlink()
        stats = run_batch(runner, items, errors, out, order=self.order, **kwargs)
        stats.total += self.skipped
        stats.resumed += self.skipped
        if self.targets.wanted():
            failed = self.write_reports(Path(stats.out))
            stats.failed += failed
            if stats.merged:
                stats.failed_all_shards = (stats.failed_all_shards or 0) + failed
            stats.reports = self.report_stats  # type: ignore[attr-defined] - shown in the summary and --json
        return stats

    def write_reports(self, answers_file: Path) -> int:
        """FHIR / SR files and STOW for every answered study of this run; returns how many failed."""
        from libra_cli.console import err_console, progress_bar

        answers = _answers(answers_file)
        todo = [(uid, answers[uid]) for uid in self.resolved if uid in answers]
        ok = failed = stored = 0
        bar = progress_bar(err_console(), "reports", disable=self.quiet or not todo)
        task = bar.add_task("reports", total=len(todo), rate="")
        t0 = time.perf_counter()
        with bar, ReportLog(self.log) as log:
            for n, (uid, rec) in enumerate(todo, 1):
                res = self.resolved[uid]
                meta = rec.get("metadata") or {}
                try:
                    done = self.targets.write(str(rec.get("text", "")), ReportSource(res.current, res.prior, res.note,
                                                                                      self.client),
                                              model=str(rec.get("model_id", "")), revision=meta.get("model_revision"),
                                              name=uid)
                except InputError as exc:
                    done = {"stow_error": str(exc)}
                log.add({"question_id": uid, "answer_id": rec.get("answer_id"), **done})
                if done.get("stow_error"):
                    failed += 1
                else:
                    ok += 1
                    stored += "stored" in done
                bar.update(task, advance=1, rate=f"{n / max(time.perf_counter() - t0, 1e-9):.1f} reports/s")
        self.report_stats = {"written": ok, "failed": failed, "stored": stored, "log": str(self.log),
                             **({"fhir": str(self.targets.fhir)} if self.targets.fhir else {}),
                             **({"sr": str(self.targets.sr)} if self.targets.sr else {})}
        return failed


class ReportLog:
    """``<out>.reports.jsonl``: one line per report written, appended and fsynced (what a rerun skips)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def __enter__(self) -> ReportLog:
        with naming(self.path):
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self

    def add(self, rec: dict[str, Any]) -> None:
        with naming(self.path):
            os.write(self._fd, (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
            os.fsync(self._fd)

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)

    @staticmethod
    def stored(out: Path) -> set[tuple[str, str]]:
        """(question_id, answer_id) of every report stored by earlier runs (all shards' logs)."""
        done = set()
        for p in out.parent.glob(out.name + ".reports*.jsonl"):
            for rec in _lines(p):
                if rec.get("stored") and not rec.get("stow_error"):
                    done.add((str(rec.get("question_id")), str(rec.get("answer_id"))))
        return done


def _finished(out: Path, num_shards: int, shard: int, overwrite: bool, targets: ReportTargets) -> dict[str, dict]:
    """Studies answered by earlier runs (merged file and this shard's file) whose reports are all there."""
    if overwrite:
        return {}
    answers = _answers(out)
    if num_shards > 1:
        answers.update(_answers(shard_path(out, num_shards, shard)))
    if not targets.wanted():
        return answers
    stored = ReportLog.stored(out) if targets.stow else set()
    return {uid: rec for uid, rec in answers.items() if targets.complete(uid)
            and (not targets.stow or (uid, str(rec.get("answer_id"))) in stored)}


def _item(index: int, uid: str, res: Resolved, client: DicomwebClient) -> Item:
    def ref(im: Any) -> ImageRef:
        return ImageRef(f"dicomweb:{im.sop}", functools.partial(fetch_instance, client, im))

    return Item(index, uid, ref(res.current), ref(res.prior) if res.prior is not None else None,
                where=f"study {uid}", selection=res.to_dict())


def open_batch(url: str, *, studies: Path | None, since: str | None, prior: str | None, modalities: tuple[str, ...],
               timeout: float | None, limit: int | None, out: Path, num_shards: int, shard: int, overwrite: bool,
               targets: ReportTargets, workers: int, say: Callable[[str], None], quiet: bool) -> DicomwebBatch:
    """List the studies, keep this shard's unfinished ones, and resolve them (current + prior) on the server.

    Long: one pass in the order of the steps the module doc lists; each step is a few lines.
    """
    from libra_cli.console import err_console, progress_bar

    if studies is not None and since is not None:
        raise InputError("give --studies FILE or --since DATE, not both")
    default_prior = parse_prior(prior)
    if default_prior not in ("auto", "none"):
        raise InputError("--prior in libra batch is auto or none; give a study's own prior in the second column of "
                         "the --studies file")
    client = connect(url, timeout)
    errors: list[ErrorRecord] = []
    if studies is not None:
        entries, errors = read_study_list(Path(studies))
    else:
        entries = [(i, uid, "") for i, uid in enumerate(studies_since(client, str(since), modalities))]
    if limit is not None and len(entries) > limit:  # as --limit elsewhere: N studies, the bad lines before them
        cut = entries[limit - 1][0]
        entries, errors = entries[:limit], [e for e in errors if e.index <= cut]
    if not entries and not errors:
        raise InputError("no studies to report: " + (f"{studies} lists none" if studies is not None else
                                                      f"the server has no {'/'.join(modalities)} study since {since}"))
    order = [uid for _, uid, _ in entries]
    entries = [e for e in entries if e[0] % num_shards == shard]
    errors = [e for e in errors if e.index % num_shards == shard]
    finished = _finished(out, num_shards, shard, overwrite, targets)
    todo = [(i, uid, p or default_prior) for i, uid, p in entries if uid not in finished]
    lookup = Studies(client, modalities)
    items: list[Item] = []
    resolved: dict[str, Resolved] = {}

    def one(entry: tuple[int, str, str]) -> Item | ErrorRecord:
        i, uid, p = entry
        try:
            with client.deadline():
                res = resolve(lookup, uid, p)
        except StudyError as exc:
            return ErrorRecord(i, uid, "input", str(exc), f"study {uid}")
        resolved[uid] = res
        return _item(i, uid, res, client)

    bar = progress_bar(err_console(), "finding studies", disable=quiet or not todo)
    task = bar.add_task("find", total=len(todo), rate="")
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="libra-pacs")
    t0 = time.perf_counter()
    try:
        with bar:
            for n, got in enumerate(pool.map(one, todo), 1):  # a ServerError ends the run here (nothing written)
                (items if isinstance(got, Item) else errors).append(got)
                bar.update(task, advance=1, rate=f"{n / max(time.perf_counter() - t0, 1e-9):.1f} studies/s")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    errors.sort(key=lambda e: e.index)
    skipped = len(entries) - len(todo)
    if skipped and not quiet:
        say(f"{skipped} stud{'y' if skipped == 1 else 'ies'} already answered (and reported): skipped")
    return DicomwebBatch(client, targets, order, items, errors, resolved, skipped,
                         reports_log(out, num_shards, shard), say, quiet)
