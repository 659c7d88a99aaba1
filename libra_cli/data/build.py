"""Training JSON / evaluation JSONL from pairs + sections (``libra data build``).

Formats (docs/reference-format.md#data):

- training JSON: ``[{"id", "image": [current, prior] | [current], "conversations":
  [{"from": "human", "value": "<image>\\n" + prompt}, {"from": "gpt", "value": target}]}]``;
- questions JSONL: ``{"question_id", "image", "text": prompt, "reference": target}``;
- optionally a Hugging Face dataset (``save_to_disk``) with the MIMIC-CXR-RRG column names.

Image paths stay relative to the image folder (optionally under ``--image-prefix``).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libra_cli.data import FINDINGS_QUERY
from libra_cli.data.sections import SECTION_COLUMNS
from libra_cli.errors import InputError

CONTEXT_FIELDS = ("indication", "history", "comparison", "technique", "examination")
TEMPLATE_FIELDS = ("query", *SECTION_COLUMNS)
MISSING_PRIOR = ("single", "self", "drop")


def default_template(context: list[str]) -> str:
    """``{query}`` followed by ``NAME: {name}`` for each context section (MAIRA-2 style)."""
    return " ".join(["{query}", *(f"{c.upper()}: {{{c}}}" for c in context)])


def parse_context(spec: str | None) -> list[str]:
    """``"indication,history"`` / ``"all"`` / ``"none"`` -> list of context sections."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return []
    if spec.strip().lower() == "all":
        return ["indication", "history", "comparison", "technique"]
    out = [c.strip().lower() for c in spec.split(",") if c.strip()]
    bad = [c for c in out if c not in SECTION_COLUMNS]
    if bad:
        raise InputError(f"--context names unknown section(s) {', '.join(bad)}; use some of {', '.join(CONTEXT_FIELDS)}")
    return out


def template_fields(template: str) -> list[str]:
    """Field names a prompt template uses; unknown ones or bad syntax are one-line errors."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise InputError(f"--template is not a valid format string ({exc}); use {{query}}, {{indication}}, ...") from exc
    bad = [n for n in names if n not in TEMPLATE_FIELDS]
    if bad or any(n == "" for n in names):
        raise InputError(
            f"--template uses unknown field(s) {', '.join(bad) or '{}'}; allowed: "
            + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
        )
    return names


@dataclass
class BuildOptions:
    """Knobs of ``build``."""

    target: str = "findings"
    query: str = FINDINGS_QUERY
    context: list[str] = field(default_factory=list)
    template: str | None = None
    missing_text: str = "None"
    split_name: str = "all"
    missing_prior: str = "single"
    image_prefix: str = ""
    compact_whitespace: bool = True
    per_study: bool = False  # one sample per study (its frontal image), not one per image


@dataclass
class BuildStats:
    """What happened, for the summary."""

    rows: int = 0
    after_split: int = 0
    kept: int = 0
    with_prior: int = 0
    dropped_no_target_images: int = 0
    dropped_no_target_studies: int = 0
    dropped_no_prior: int = 0
    sections_rows: int = 0
    outputs: list[str] = field(default_factory=list)


def read_sections(path: Path, required: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
    """``mimic_cxr_sectioned.csv`` -> {study 's5...': {section: text}} (empty cells left out)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from libra_cli.data.io import check_readable

    check_readable(path, "sections file")
    try:
        table = pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in ("study", *SECTION_COLUMNS)},
                strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read sections file '{path}': {first}; give mimic_cxr_sectioned.csv from extract-sections") from exc
    if "study" not in table.column_names:
        raise InputError(f"sections file '{path}' has no 'study' column; give mimic_cxr_sectioned.csv from extract-sections")
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise InputError(f"sections file '{path}' has no {', '.join(missing)} column (it has: "
                         f"{', '.join(table.column_names)}); choose another --target or give the full "
                         "mimic_cxr_sectioned.csv from extract-sections")
    cols = [c for c in SECTION_COLUMNS if c in table.column_names]
    studies = table["study"].to_pylist()
    data = {c: table[c].to_pylist() for c in cols}
    out: dict[str, dict[str, str]] = {}
    for i, s in enumerate(studies):
        out[s] = {c: data[c][i] for c in cols if data[c][i]}
    return out


def _clean(text: str | None, compact: bool) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split()) if compact else text.strip()
    return text or None


def _checked_pairs(pairs: Any, opts: BuildOptions) -> Any:
    """The pairs table after the option checks, filtered to ``opts.split_name``."""
    import pyarrow.compute as pc

    need = ["dicom_id", "study_id", "image"]
    missing = [c for c in need if c not in pairs.column_names]
    if missing:
        raise InputError(f"pairs file lacks column(s) {', '.join(missing)}; give the output of 'libra data pair-priors'")
    if opts.target not in SECTION_COLUMNS:
        raise InputError(f"--target '{opts.target}' is not a section; use one of {', '.join(SECTION_COLUMNS)}")
    if opts.missing_prior not in MISSING_PRIOR:
        raise InputError(f"--missing-prior '{opts.missing_prior}' is not one of {', '.join(MISSING_PRIOR)}")
    if opts.split_name != "all":
        if "split" not in pairs.column_names:
            raise InputError("--split-name needs a 'split' column; run pair-priors with --split, or give --split here")
        present = sorted(v for v in pc.unique(pairs["split"]).to_pylist() if v)
        if opts.split_name not in present:
            raise InputError(
                f"split name '{opts.split_name}' does not occur in the pairs (they have: {', '.join(present) or 'none'}); "
                "use one of those or 'all'"
            )
        pairs = pairs.filter(pc.equal(pairs["split"], opts.split_name))
    return pairs


def build_records(
    pairs: Any,
    sections: dict[str, dict[str, str]],
    opts: BuildOptions,
) -> tuple[list[dict[str, Any]], BuildStats]:
    """Join pairs with sections; one record per kept image with everything the writers need."""

    stats = BuildStats(rows=pairs.num_rows)
    pairs = _checked_pairs(pairs, opts)
    stats.after_split = pairs.num_rows

    template = opts.template if opts.template is not None else default_template(opts.context)
    fields = template_fields(template)
    if "query" not in fields and opts.template is None:  # pragma: no cover - default always has it
        fields.append("query")

    prefix = opts.image_prefix.rstrip("/") + "/" if opts.image_prefix else ""
    cols = {c: pairs[c].to_pylist() for c in ("dicom_id", "study_id", "subject_id", "image", "prior_image", "split",
                                               "ViewPosition", "StudyTime", "prior_StudyDate")
            if c in pairs.column_names}
    n = pairs.num_rows
    prior_col = cols.get("prior_image", [None] * n)
    records: list[dict[str, Any]] = []
    dropped_studies: set[str] = set()
    per_study: dict[str, tuple[str | None, dict[str, str | None], str]] = {}  # target, sections, prompt
    for i in range(n):
        study_key = _study_key(cols["study_id"][i])
        cached = per_study.get(study_key)
        if cached is None:
            sec = sections.get(study_key, {})
            values = {c: _clean(sec.get(c), opts.compact_whitespace) for c in SECTION_COLUMNS}
            fmt = {"query": opts.query,
                   **{c: (values[c] if values[c] is not None else opts.missing_text) for c in SECTION_COLUMNS}}
            cached = per_study[study_key] = (values[opts.target], values, template.format(**fmt))
        target, values, prompt = cached
        if target is None:
            stats.dropped_no_target_images += 1
            dropped_studies.add(study_key)
            continue
        prior = prior_col[i] or None
        if prior is None and opts.missing_prior == "drop":
            stats.dropped_no_prior += 1
            continue
        current = prefix + cols["image"][i]
        images = [current] if prior is None else [current, prefix + prior]
        if prior is None and opts.missing_prior == "self":
            images = [current, current]
        records.append({
            "id": str(cols["dicom_id"][i]),
            "images": images,
            "has_prior": prior is not None,
            "prompt": prompt,
            "target": target,
            "sections": values,
            "study_id": study_key,
            "subject_id": cols["subject_id"][i] if "subject_id" in cols else None,
            "split": cols["split"][i] if "split" in cols else None,
            "view": cols["ViewPosition"][i] if "ViewPosition" in cols else "",
            "time": cols["StudyTime"][i] if "StudyTime" in cols else None,
            "prior_date": cols["prior_StudyDate"][i] if "prior_StudyDate" in cols else None,
        })
        stats.with_prior += prior is not None
    if opts.per_study:
        records = one_per_study(records)
    stats.kept = len(records)
    stats.with_prior = sum(r["has_prior"] for r in records)
    stats.dropped_no_target_studies = len(dropped_studies)
    return records, stats


def one_per_study(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per study: its frontal image (PA > AP > other frontal, latest time) with that image's prior
    from pair-priors; the choice is recorded in ``selection`` (docs/data.md#study-level-samples)."""
    from libra_cli.data.studies import RULE, StudyImage, current_key

    by_study: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_study.setdefault(r["study_id"], []).append(r)
    out = []
    for study in by_study.values():
        images = [StudyImage(r["images"][0], str(r.get("view") or ""), None,
                             float(r["time"]) if r.get("time") not in (None, "") else None) for r in study]
        frontal = [(i, im) for i, im in enumerate(images) if im.frontal]
        pick = min(frontal, key=current_key)[0] if frontal else 0
        chosen = dict(study[pick])
        chosen["selection"] = {
            "current": chosen["images"][0], "current_view": chosen.get("view") or None,
            "prior": chosen["images"][1] if chosen["has_prior"] else None, "prior_date": chosen.get("prior_date"),
            "study_images": len(study), "rule": RULE,
            **({} if frontal else {"note": "no frontal image in the study: the first image is the current"}),
        }
        out.append(chosen)
    return out


def _study_key(value: Any) -> str:
    """Pairs carry ``50414267`` (int); sections carry ``s50414267``."""
    text = str(value).strip()
    if text.endswith(".0"):
        text = text[:-2]
    return text if text.startswith("s") else f"s{text}"


def write_training_json(records: list[dict[str, Any]], path: Path) -> None:
    """The conversations-format training list (docs/reference-format.md#data), atomically."""
    from libra_cli.atomic import atomic_path

    items = [
        {
            "id": r["id"],
            "image": r["images"],
            "conversations": [
                {"from": "human", "value": "<image>\n" + r["prompt"]},
                {"from": "gpt", "value": r["target"]},
            ],
            **({"selection": r["selection"]} if r.get("selection") else {}),
        }
        for r in records
    ]
    # json.dumps (C encoder) is many times faster than json.dump's streaming pure-Python path
    text = json.dumps(items, ensure_ascii=False)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.write("\n")


def write_questions(records: list[dict[str, Any]], path: Path) -> None:
    """Evaluation questions JSONL (docs/reference-format.md#data): question_id, image, text, reference."""
    from libra_cli.atomic import atomic_path

    dumps = json.JSONEncoder(ensure_ascii=False).encode
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            q = {"question_id": r["id"], "image": r["images"], "text": r["prompt"], "reference": r["target"]}
            if r.get("selection"):
                q["selection"] = r["selection"]
            fh.write(dumps(q))
            fh.write("\n")


def write_hf_dataset(records: list[dict[str, Any]], path: Path) -> None:
    """A ``datasets`` folder with MIMIC-CXR-RRG column names (paths, not pixels), written atomically."""
    import shutil
    import tempfile

    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a core dependency
        raise InputError("--hf-dataset needs the 'datasets' package; pip install datasets") from exc
    cols: dict[str, list[Any]] = {
        "id": [r["id"] for r in records],
        "subject_id": [r["subject_id"] for r in records],
        "study_id": [r["study_id"] for r in records],
        "split": [r["split"] for r in records],
        "main_image": [r["images"][0] for r in records],
        "prior_image": [r["images"][1] if len(r["images"]) > 1 else None for r in records],
        "default_prompt": [r["prompt"] for r in records],
    }
    for c in ("findings", "impression", "indication", "comparison", "technique", "history", "examination"):
        cols[c] = [r["sections"][c] for r in records]
    features = datasets.Features(
        {k: datasets.Value("int64") if k == "subject_id" else datasets.Value("string") for k in cols}
    )
    ds = datasets.Dataset.from_dict(cols, features=features)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        ds.save_to_disk(str(tmp))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def attach_split(pairs: Any, split_path: Path) -> Any:
    """Add (or replace) the pairs' ``split`` column from the official split file."""
    import pyarrow.compute as pc

    from libra_cli.data.pairing import read_split

    split = read_split(split_path)
    idx = pc.index_in(pairs["dicom_id"].cast("string"), value_set=split["dicom_id"])
    col = pc.take(split["split"], idx)
    if "split" in pairs.column_names:
        pairs = pairs.drop_columns(["split"])
    return pairs.append_column("split", col)


def run_build(
    pairs_path: Path,
    sections_path: Path,
    out_json: Path | None,
    out_questions: Path | None,
    opts: BuildOptions,
    split_path: Path | None = None,
    hf_out: Path | None = None,
) -> BuildStats:
    """Read, join and write: the whole ``build`` command minus the rendering."""
    from libra_cli.data.io import read_table

    if out_json is None and out_questions is None and hf_out is None:
        raise InputError("nothing to write; give --out-json, --out-questions and/or --hf-dataset")
    if opts.template is not None:
        template_fields(opts.template)
    pairs = read_table(pairs_path, "pairs file")
    if split_path is not None:
        if "dicom_id" not in pairs.column_names:
            raise InputError("pairs file has no dicom_id column; give the output of 'libra data pair-priors'")
        pairs = attach_split(pairs, split_path)
    if opts.target not in SECTION_COLUMNS:
        raise InputError(f"--target '{opts.target}' is not a section; use one of {', '.join(SECTION_COLUMNS)}")
    sections = read_sections(sections_path, required=(opts.target,))
    records, stats = build_records(pairs, sections, opts)
    stats.sections_rows = len(sections)
    if not records:
        raise InputError(f"no image has a {opts.target} section in '{sections_path}' ({stats.rows} pairs read); "
                         "nothing was written: check that the pairs and sections come from the same studies")
    if out_json is not None:
        write_training_json(records, out_json)
        stats.outputs.append(str(out_json))
    if out_questions is not None:
        write_questions(records, out_questions)
        stats.outputs.append(str(out_questions))
    if hf_out is not None:
        write_hf_dataset(records, hf_out)
        stats.outputs.append(str(hf_out))
    return stats
