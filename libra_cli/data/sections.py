"""Report sectioning for MIMIC-CXR free-text reports (``libra data extract-sections``).

Same output as the MIMIC-CXR section scripts with Libra's customisation
(``scripts/mimic-cxr/create_section_files.py`` + ``section_parser.py``):

- ``mimic_cxr_sectioned.csv``: header ``study,findings,impression,indication,comparison,technique,
  history,examination,last_paragraph``; each cell is the *last* section of that name, stripped;
  studies handled by the special-case rules are not in this file (as in the original);
- ``mimic_cxr_NN.csv`` (10,000 rows each, no header) or ``mimic_cxr_sections.csv`` (``--no-split``):
  ``study,text`` with the first of findings > impression > indication > comparison > technique >
  history > examination > last_paragraph, or the hand-set slice / section of the special cases.

Differences that only matter where the original crashes or depends on the file system:
reports are decoded as UTF-8 with a leading BOM dropped and undecodable bytes replaced by U+FFFD
(the original dies on the first such file); studies are visited in sorted order (the original
uses ``os.listdir`` order); unreadable files are skipped and reported. Line endings are
normalised exactly like Python's text mode (``\\r\\n`` and lone ``\\r`` become ``\\n``).
"""

from __future__ import annotations

import csv
import functools
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from libra_cli.errors import InputError

SECTION_COLUMNS = (
    "findings", "impression", "indication", "comparison", "technique", "history", "examination", "last_paragraph",
)
CHUNK_ROWS = 10_000

# "\n " then an all-caps header, a colon and one whitespace character
_HEADER = re.compile(r"\n ([A-Z ()/,-]+):\s", re.DOTALL)
_PARAGRAPH = "\n \n"

# header (lower-cased, stripped) -> normalised section name, as counted over MIMIC-CXR
_KNOWN_HEADERS: dict[str, str] = {
    "preamble": "preamble", "impression": "impression", "comparison": "comparison",
    "indication": "indication", "findings": "findings", "examination": "examination",
    "technique": "technique", "history": "history", "comparisons": "comparison",
    "clinical history": "history", "reason for examination": "indication",
    "notification": "notification", "reason for exam": "indication",
    "clinical information": "history", "exam": "examination", "clinical indication": "indication",
    "conclusion": "impression", "chest, two views": "findings",
    "recommendation(s)": "recommendations", "type of examination": "examination",
    "reference exam": "comparison", "patient history": "history", "addendum": "addendum",
    "comparison exam": "comparison", "date": "date", "comment": "comment",
    "findings and impression": "impression", "wet read": "wet read", "comparison film": "comparison",
    "recommendations": "recommendations", "findings/impression": "impression", "pfi": "history",
    "recommendation": "recommendations", "wetread": "wet read",
    # misspellings seen in the corpus (including the corpus' own 'ndication' -> impression)
    "ndication": "impression", "impresson": "impression", "imprression": "impression",
    "imoression": "impression", "impressoin": "impression", "imprssion": "impression",
    "impresion": "impression", "imperssion": "impression", "mpression": "impression",
    "impession": "impression", "findings/ impression": "impression", "finding": "findings",
    "findins": "findings", "findindgs": "findings", "findgings": "findings", "findngs": "findings",
    "findnings": "findings", "finidngs": "findings", "idication": "indication",
    "reference findings": "findings", "comparision": "comparison", "comparsion": "comparison",
    "comparrison": "comparison", "comparisions": "comparison",
}
# a header that contains one of these words is that section (first match wins, in this order)
_MAIN_WORDS = ("impression", "findings", "history", "comparison", "indication", "technique", "addendum")
# a header that describes the whole study counts as findings
_FINDINGS_LIKE = re.compile(
    "(" + "|".join([
        "chest", "portable", "pa and lateral", "lateral and pa", "ap and lateral", "lateral and ap",
        "frontal and", "two views", "frontal view", "pa view", "ap view", "one view", "lateral view",
        "bone window", "frontal upright", "frontal semi-upright", "ribs", "pa and lat",
    ]) + ")"
)

# study -> section name to take (reports whose useful text sits under an unusual header)
SPECIAL_SECTION: dict[str, str] = {
    "s50913680": "recommendations", "s59363654": "examination", "s59279892": "technique",
    "s59768032": "recommendations", "s57936451": "indication", "s50058765": "indication",
    "s53356173": "examination", "s53202765": "technique", "s50808053": "technique",
    "s51966317": "indication", "s50743547": "examination", "s56451190": "note",
    "s59067458": "recommendations", "s59215320": "examination", "s55124749": "indication",
    "s54365831": "indication", "s59087630": "recommendations", "s58157373": "recommendations",
    "s56482935": "recommendations", "s58375018": "recommendations", "s54654948": "indication",
    "s55157853": "examination", "s51491012": "history",
}
# study -> (start, end) character slice of the report text (unparseable reports; (0, 0): no findings)
SPECIAL_SLICE: dict[str, tuple[int, int]] = {
    "s50525523": (201, 349), "s57564132": (233, 554), "s59982525": (313, 717),
    "s53488209": (149, 475), "s54875119": (234, 988), "s50196495": (59, 399),
    "s56579911": (59, 218), "s52648681": (292, 631), "s59889364": (172, 453),
    "s53514462": (73, 377), "s59505494": (59, 450), "s53182247": (59, 412),
    "s51410602": (47, 320), "s56412866": (522, 822), "s54986978": (59, 306),
    "s59003148": (262, 505), "s57150433": (61, 394), "s56760320": (219, 457),
    "s59562049": (158, 348), "s52674888": (145, 296), "s55258338": (192, 568),
    "s59330497": (140, 655), "s52119491": (179, 454),
    "s58235663": (0, 0), "s50798377": (0, 0), "s54168089": (0, 0), "s53071062": (0, 0),
    "s56724958": (0, 0), "s54231141": (0, 0), "s53607029": (0, 0), "s52035334": (0, 0),
}


@functools.lru_cache(maxsize=65536)
def normalize_header(raw: str) -> str:
    """Map a raw header ('COMPARISONS', 'CHEST, PA AND LAT') to its section name."""
    name = raw.lower().strip()
    known = _KNOWN_HEADERS.get(name)
    if known is not None:
        return known
    for word in _MAIN_WORDS:
        if word in name:
            return word
    if _FINDINGS_LIKE.search(name):
        return "findings"
    return name


def split_sections(text: str) -> tuple[list[str], list[str]]:
    """Split a report into (sections, names), the MIMIC-CXR way.

    A section starts after a line ``" HEADER:"`` and runs to the next such line; text before the
    first header is 'preamble' (it keeps the header line's leading newline and space); a report
    without headers is one 'full report' section. Empty findings/impression sections are dropped;
    when neither exists, the last section's trailing paragraphs become 'last_paragraph'.

    (The original resumes its header search one line into each section; every header match
    starts with a newline, so that is the same as continuing from the end of the previous match,
    which is what ``re.split`` does.)
    """
    parts = _HEADER.split(text)
    if len(parts) == 1:
        sections = [text]
        names = ["full report"]
    else:
        sections = parts[2::2]
        sections.insert(0, parts[0] + "\n ")
        names = [normalize_header(h) for h in parts[1::2]]
        names.insert(0, "preamble")
    if "findings" in names or "impression" in names:
        for i in range(len(names) - 1, -1, -1):
            if names[i] in ("impression", "findings") and not sections[i].strip():
                del sections[i], names[i]

    if "impression" not in names and "findings" not in names and _PARAGRAPH in sections[-1]:
        first, rest = sections[-1].split(_PARAGRAPH, 1)
        sections[-1] = first
        sections.append(rest)
        names.append("last_paragraph")
    return sections, names


@dataclass
class StudyResult:
    """One report's outputs: the chunk-file text, and the sectioned row (None for special cases)."""

    study: str
    text: str
    sectioned: list[str | None] | None
    issues: list[str] = field(default_factory=list)
    main_index: int = -1  # which sectioned cell ``text`` is (-1: none)


def section_study(study: str, text: str) -> StudyResult:
    """Apply the create_section_files rules to one decoded, newline-normalised report."""
    if study in SPECIAL_SLICE:
        a, b = SPECIAL_SLICE[study]
        return StudyResult(study, text[a:b], None)
    sections, names = split_sections(text)
    last = {name: i for i, name in enumerate(names)}  # the *last* section of each name
    issues: list[str] = []
    if names[0] == "full report":
        issues.append("no section headers")
    if study in SPECIAL_SECTION:
        want = SPECIAL_SECTION[study]
        if want in last:
            return StudyResult(study, sections[last[want]].strip(), None, issues)
        # the original would crash here; keep going with the generic rule and say so
        issues.append(f"special-case section '{want}' not found")
    row: list[str | None] = [sections[last[n]].strip() if n in last else None for n in SECTION_COLUMNS]
    for k, cell in enumerate(row):
        if cell is not None:
            return StudyResult(study, cell, row, issues, k)
    issues.append("no usable section")
    return StudyResult(study, "", row, issues, -1)


def decode_report(data: bytes) -> tuple[str, list[str]]:
    """Bytes -> text as Python's text mode would give it, never failing; report what was odd."""
    issues: list[str] = []
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
        issues.append("utf-8 BOM removed")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        issues.append("non-UTF-8 bytes replaced")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text:
        issues.append("empty file")
    return text, issues


# ---------------------------------------------------------------- walking the report tree


def find_reports_root(path: Path) -> Path:
    """Accept the ``files`` folder or the folder above it; fail clearly on anything else."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"reports folder '{path}' does not exist; give the unzipped mimic-cxr-reports 'files' folder")
    if not path.is_dir():
        raise InputError(f"'{path}' is not a folder; give the unzipped mimic-cxr-reports 'files' folder")
    if not _group_dirs(path) and (path / "files").is_dir() and _group_dirs(path / "files"):
        return path / "files"
    return path


def _group_dirs(root: Path) -> list[str]:
    """The ``pNN`` folders under ``root``, sorted (as the original)."""
    try:
        with os.scandir(root) as it:
            return sorted(e.name for e in it if e.name.startswith("p") and len(e.name) == 3 and e.is_dir())
    except OSError:
        return []


def patient_dirs(root: Path) -> list[str]:
    """All ``pNN/pSUBJECT`` folders in the original's (sorted) order, as paths relative to ``root``."""
    out: list[str] = []
    for grp in _group_dirs(root):
        with os.scandir(root / grp) as it:
            pats = sorted(e.name for e in it if e.name.startswith("p") and e.is_dir())
        out.extend(f"{grp}/{p}" for p in pats)
    return out


_NEEDS_QUOTES = re.compile(r'[",\r\n]')


def csv_field(value: str | None) -> str:
    """One field exactly as ``csv.writer`` (excel dialect, QUOTE_MINIMAL) writes it in a row of
    two or more fields; a plain-Python fast path (the C writer copies char by char)."""
    if not value:
        return ""
    if _NEEDS_QUOTES.search(value) is None:
        return value
    return '"' + value.replace('"', '""') + '"'


def csv_row(fields: Iterable[str | None]) -> str:
    """A ``csv.writer`` row (at least two fields) including its ``\\r\\n`` terminator."""
    return ",".join([csv_field(f) for f in fields]) + "\r\n"


@dataclass
class BatchResult:
    """What one worker hands back for a batch of patient folders, already CSV-formatted."""

    sectioned: str
    chunk_lines: list[str]
    issues: list[tuple[str, str]]
    reports: int
    nbytes: int
    with_section: dict[str, int]
    special: int


def _read_file(path: str) -> bytes:
    """Whole file via raw fds (cheaper than ``open()``'s buffered object for ~1 KB reports)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 1 << 16)
        if len(data) == 1 << 16:
            chunks = [data]
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data
    finally:
        os.close(fd)


def process_patients(root: str, rel_dirs: list[str]) -> BatchResult:
    """Read, decode and section every ``s*.txt`` report of the given patient folders (worker side)."""
    sect: list[str] = []
    main: list[str] = []
    issues: list[tuple[str, str]] = []
    reports = 0
    nbytes = 0
    counts = [0] * len(SECTION_COLUMNS)
    ncols = range(len(SECTION_COLUMNS))
    special = 0
    search = _NEEDS_QUOTES.search
    for rel in rel_dirs:
        folder = f"{root}/{rel}/"
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(".txt") and n.startswith("s"))
        except OSError as exc:
            issues.append((rel, f"unreadable folder: {exc.strerror or exc}"))
            continue
        for name in names:
            try:
                data = _read_file(folder + name)
            except OSError as exc:
                issues.append((f"{rel}/{name}", f"unreadable file, skipped: {exc.strerror or exc}"))
                continue
            nbytes += len(data)
            text, dec_issues = decode_report(data)
            res = section_study(name[:-4], text)
            if dec_issues or res.issues:
                issues.extend((f"{rel}/{name}", msg) for msg in (*dec_issues, *res.issues))
            cells = res.sectioned
            study = csv_field(res.study)
            if cells is None:
                special += 1
                main.append(study + "," + csv_field(res.text) + "\r\n")
            else:
                # csv.writer's QUOTE_MINIMAL, inlined (see csv_field); the main text is one of the cells
                q = ["" if not f else (f if search(f) is None else '"' + f.replace('"', '""') + '"') for f in cells]
                sect.append(study + "," + ",".join(q) + "\r\n")
                k = res.main_index
                main.append(study + "," + (q[k] if k >= 0 else "") + "\r\n")
                for i in ncols:
                    if cells[i]:
                        counts[i] += 1
            reports += 1
    with_section = dict(zip(SECTION_COLUMNS, counts, strict=True))
    return BatchResult("".join(sect), main, issues, reports, nbytes, with_section, special)


def _process_star(args: tuple[str, list[str]]) -> BatchResult:
    return process_patients(*args)


def _batches(dirs: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(dirs), size):
        yield dirs[i : i + size]


@dataclass
class SectionStats:
    """Counts for the summary (and the issue log)."""

    reports: int = 0
    sectioned_rows: int = 0
    chunk_files: list[str] = field(default_factory=list)
    nbytes: int = 0
    issue_counts: dict[str, int] = field(default_factory=dict)
    issues_file: str | None = None
    with_section: dict[str, int] = field(default_factory=dict)
    special_cases: int = 0
    stale_files: list[str] = field(default_factory=list)


def _issue_kind(msg: str) -> str:
    return msg.split(":", 1)[0]


def _results(jobs: list[tuple[str, list[str]]], workers: int) -> Iterator[tuple[int, BatchResult]]:
    """(patient dirs done, result) per job, in job order; on ``workers`` processes when it pays."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield len(job[1]), _process_star(job)
        return
    import multiprocessing as mp

    ctx = mp.get_context("fork" if hasattr(os, "fork") else "spawn")
    with ctx.Pool(processes=workers) as pool:
        for job, res in zip(jobs, pool.imap(_process_star, jobs, chunksize=1), strict=True):
            yield len(job[1]), res


def _write_issues(out_dir: Path, issues: list[tuple[str, str]], stats: SectionStats) -> None:
    """``extract_sections_issues.csv`` (path, issue), or no file when there were none; counts per kind."""
    from libra_cli.atomic import atomic_path

    for _, msg in issues:
        kind = _issue_kind(msg)
        stats.issue_counts[kind] = stats.issue_counts.get(kind, 0) + 1
    issue_path = out_dir / "extract_sections_issues.csv"
    if issues:
        with atomic_path(issue_path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "issue"])
            w.writerows(issues)
        stats.issues_file = str(issue_path)
    elif issue_path.exists():
        issue_path.unlink()


def extract_sections(
    reports_dir: Path,
    out_dir: Path,
    workers: int = 2,
    no_split: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    batch_dirs: int = 256,
    on_progress: Callable[[int, int, int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> SectionStats:
    """Section every report under ``reports_dir`` into ``out_dir`` (files written atomically).

    ``on_start(n_patient_dirs)`` and ``on_progress(done_dirs, reports, bytes)`` drive a progress bar.

    Long: the streaming writer keeps the sectioned CSV open and flushes chunk files as results arrive;
    its state (pending rows, chunk index) lives in this one frame.
    """
    from libra_cli.atomic import atomic_path

    if chunk_rows < 1:
        raise InputError("--chunk-rows must be at least 1")
    root = find_reports_root(reports_dir)
    dirs = patient_dirs(root)
    if not dirs:
        raise InputError(
            f"no report folders under '{root}' (expected pNN/pSUBJECT/sSTUDY.txt); "
            "give the unzipped mimic-cxr-reports 'files' folder"
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file; extract-sections writes a folder of CSV files: give a folder path")
    from libra_cli.atomic import naming

    with naming(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    if on_start:
        on_start(len(dirs))
    stats = SectionStats()
    jobs = [(str(root), b) for b in _batches(dirs, batch_dirs)]
    issues: list[tuple[str, str]] = []
    counts = dict.fromkeys(SECTION_COLUMNS, 0)

    header = ["study", *SECTION_COLUMNS]
    chunk_names: list[str] = []
    with atomic_path(out_dir / "mimic_cxr_sectioned.csv") as sect_tmp, open(
        sect_tmp, "w", encoding="utf-8", newline=""
    ) as sect_fh:
        csv.writer(sect_fh).writerow(header)
        pending: list[str] = []  # chunk lines not yet written
        chunk_index = 0
        done_dirs = 0

        def flush(final: bool) -> None:
            nonlocal pending, chunk_index
            while len(pending) >= chunk_rows or (final and pending):
                name = "mimic_cxr_sections.csv" if no_split else f"mimic_cxr_{chunk_index:02d}.csv"
                part = pending if no_split else pending[:chunk_rows]
                with atomic_path(out_dir / name) as tmp:
                    tmp.write_text("".join(part), encoding="utf-8", newline="")
                chunk_names.append(name)
                pending = [] if no_split else pending[chunk_rows:]
                chunk_index += 1
                if no_split:
                    break

        for ndirs, res in _results(jobs, workers):
            sect_fh.write(res.sectioned)
            for col, k in res.with_section.items():
                counts[col] += k
            pending.extend(res.chunk_lines)
            if not no_split:
                flush(final=False)
            issues.extend(res.issues)
            stats.reports += res.reports
            stats.nbytes += res.nbytes
            stats.special_cases += res.special
            done_dirs += ndirs
            if on_progress:
                on_progress(done_dirs, stats.reports, stats.nbytes)
        if stats.reports == 0:
            raise InputError(f"no sSTUDY.txt reports found under '{root}'; give the unzipped mimic-cxr-reports 'files' folder")
        flush(final=True)

    stats.chunk_files = chunk_names
    _write_issues(out_dir, issues, stats)
    stats.with_section = counts
    stats.sectioned_rows = stats.reports - stats.special_cases
    stats.stale_files = sorted(
        p.name for p in out_dir.glob("mimic_cxr_*.csv")
        if re.fullmatch(r"mimic_cxr_(\d{2,}|sections)\.csv", p.name) and p.name not in chunk_names
    )
    return stats


def iter_report_files(root: Path) -> Iterable[Path]:
    """Every report path in processing order (used by tests and benchmarks)."""
    for rel in patient_dirs(root):
        folder = root / rel
        yield from (folder / n for n in sorted(os.listdir(folder)) if n.endswith(".txt") and n.startswith("s"))
