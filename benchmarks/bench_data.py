"""Benchmarks for ``libra data`` at MIMIC-CXR scale, on synthetic data generated here.

    python benchmarks/bench_data.py pairs      # ~377k images / 65k subjects, train split ~369k
    python benchmarks/bench_data.py sections   # 227,835 reports (writes ~230k small files)
    python benchmarks/bench_data.py build      # after 'pairs': training JSON + questions for the train split
    python benchmarks/bench_data.py all --workdir /tmp/libra-bench

Pairing: ``libra data pair-priors`` end to end (a fresh ``libra`` process, reading the gzip CSVs,
writing parquet) against the README snippet's algorithm, which is run on the *full* table for the
first K subjects and extrapolated linearly (its cost per subject is a full-table filter plus the
subject's rows, so per-subject time is what scales). Sections: reports/s of
``extract-sections`` and the reference port of the original scripts on a subset.

Numbers are wall-clock and CPU seconds; on a shared machine wall time includes waiting for CPU.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.builders: this repo's (radgraph, f1chexbert ship a top-level "tests")
MIMIC_SUBJECTS = 65_379
MIMIC_REPORTS = 227_835


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bench_pairs(work: Path, subjects: int, snippet_subjects: int, repeats: int) -> None:
    import pandas as pd

    from tests.builders.mimic import make_metadata, write_metadata_csv, write_split_csv

    meta_p, split_p = work / "mimic-cxr-2.0.0-metadata.csv.gz", work / "mimic-cxr-2.0.0-split.csv.gz"
    t = time.perf_counter()
    if not meta_p.exists():
        meta, split = make_metadata(subjects, images_per_subject=5.09, seed=1)
        write_metadata_csv(meta, meta_p)
        write_split_csv(split, meta, split_p)
        print(f"generated {len(meta['dicom_id']):,} images / {subjects:,} subjects in {time.perf_counter() - t:.1f} s "
              f"({meta_p.stat().st_size / 1e6:.1f} MB + {split_p.stat().st_size / 1e6:.1f} MB gzip)")

    out = work / "pairs_train.parquet"
    cmd = [sys.executable, "-m", "libra_cli", "data", "pair-priors", str(meta_p), "--split", str(split_p),
           "--split-name", "train", "--out", str(out)]
    walls, cpus = [], []
    for _ in range(repeats):
        c0 = _child_cpu()
        t = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        walls.append(time.perf_counter() - t)
        cpus.append(_child_cpu() - c0)
        if res.returncode != 0:
            sys.exit(f"pair-priors failed: {res.stderr}")
    ours = pd.read_parquet(out)
    n_rows, n_subj = len(ours), ours["subject_id"].nunique()
    best = min(walls)
    print(f"pair-priors (CLI, end to end, train split): {n_rows:,} rows / {n_subj:,} subjects: "
          f"wall best {best:.2f} s (runs: {', '.join(f'{w:.2f}' for w in walls)}), "
          f"CPU {min(cpus):.2f} s  [target <= 3 s on 2 cores]")

    # the snippet, on the same joined + filtered table, for the first K subjects
    meta = pd.read_csv(meta_p, usecols=["dicom_id", "subject_id", "study_id", "StudyDate", "StudyTime"])
    split = pd.read_csv(split_p, usecols=["dicom_id", "split"])
    df = meta.merge(split, on="dicom_id")
    df = df[df["split"] == "train"].reset_index(drop=True)
    df["image"] = ["files/p" + str(s)[:2] + f"/p{s}/s{st}/{d}.jpg" for s, st, d in zip(df.subject_id, df.study_id, df.dicom_id, strict=True)]
    t = time.perf_counter()
    df = df.sort_values(by=["subject_id", "StudyDate", "StudyTime"]).reset_index(drop=True)
    df["prior_image"] = None
    t_sort = time.perf_counter() - t
    unique = df["subject_id"].unique()
    t = time.perf_counter()
    for subject_id in unique[:snippet_subjects]:
        group = df[df["subject_id"] == subject_id]
        prior_image, last_date = None, None
        for idx, row in group.iterrows():
            if last_date is None or row["StudyDate"] > last_date:
                df.at[idx, "prior_image"] = prior_image
                last_date = row["StudyDate"]
            else:
                same_day_first = group[(group["StudyDate"] == row["StudyDate"])].index[0]
                df.at[idx, "prior_image"] = df.at[same_day_first, "prior_image"]
            prior_image = row["image"]
    t_loop = time.perf_counter() - t
    est = t_sort + t_loop * len(unique) / snippet_subjects
    # the subset must agree with ours
    head = df[df["subject_id"].isin(set(unique[:snippet_subjects]))]
    mine = ours[ours["subject_id"].isin(set(unique[:snippet_subjects]))]
    same = list(head["dicom_id"]) == list(mine["dicom_id"]) and [p or None for p in head["prior_image"]] == [
        p if isinstance(p, str) else None for p in mine["prior_image"]]
    print(f"README snippet: {snippet_subjects:,} of {len(unique):,} subjects in {t_loop:.2f} s "
          f"-> extrapolated {est:.0f} s for the split ({est / best:,.0f}x slower than pair-priors); "
          f"outputs on the subset identical: {same}")


def bench_sections(work: Path, reports: int, workers: int, ref_reports: int) -> None:
    from libra_cli.data.sections import SPECIAL_SECTION, SPECIAL_SLICE, extract_sections
    from tests.builders.mimic import write_report_tree
    from tests.test_data_reference import reference_sections

    root = work / f"reports_{reports}" / "files"
    if not root.exists():
        t = time.perf_counter()
        write_report_tree(root, reports, seed=2)
        print(f"generated {reports:,} reports in {time.perf_counter() - t:.1f} s")
    out = work / "sections_out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "libra_cli", "data", "extract-sections", str(root), "--out", str(out), "-j", str(workers)]
    c0 = _child_cpu()
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    cpu = _child_cpu() - c0
    if res.returncode != 0:
        sys.exit(f"extract-sections failed: {res.stderr}")
    print(f"extract-sections (CLI, {workers} workers): {reports:,} reports in {wall:.2f} s wall "
          f"= {reports / wall:,.0f} reports/s (CPU {cpu:.2f} s over all processes); "
          f"projected {MIMIC_REPORTS * wall / reports:.1f} s for {MIMIC_REPORTS:,}  [target < 10 s]")

    # the original scripts' algorithm (reference port, single process) on a subset
    sub = work / f"reports_{ref_reports}" / "files"
    if not sub.exists():
        write_report_tree(sub, ref_reports, seed=3)
    t = time.perf_counter()
    ref = reference_sections(sub, SPECIAL_SECTION, {k: list(v) for k, v in SPECIAL_SLICE.items()})
    t_ref = time.perf_counter() - t
    out2 = work / "sections_sub"
    shutil.rmtree(out2, ignore_errors=True)
    t = time.perf_counter()
    extract_sections(sub, out2, workers=workers)
    t_ours = time.perf_counter() - t
    same = all((out2 / n).read_bytes() == b for n, b in ref.items())
    print(f"original scripts (reference port, 1 process): {ref_reports:,} reports in {t_ref:.2f} s "
          f"= {ref_reports / t_ref:,.0f} reports/s; ours in-process {t_ours:.2f} s; outputs identical: {same}")


def bench_build(work: Path) -> None:
    """``build`` on the train pairs with a synthetic sectioned CSV (90% of studies have findings)."""
    import csv

    import numpy as np
    import pandas as pd

    pairs = work / "pairs_train.parquet"
    if not pairs.exists():
        sys.exit("run the 'pairs' benchmark first (it writes pairs_train.parquet)")
    studies = pd.read_parquet(pairs, columns=["study_id"])["study_id"].unique()
    rng = np.random.default_rng(4)
    sect = work / "build_sectioned.csv"
    with open(sect, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["study", "findings", "impression", "indication", "comparison", "technique", "history",
                    "examination", "last_paragraph"])
        for st in studies:
            f = "" if rng.random() < 0.1 else "The lungs are clear.\n \n No effusion. Heart size is normal."
            w.writerow([f"s{st}", f, "No acute process.", "Cough.", "None.", "PA and lateral.", "", "CHEST", ""])
    cmd = [sys.executable, "-m", "libra_cli", "data", "build", "--pairs", str(pairs), "--sections", str(sect),
           "--out-json", str(work / "train.json"), "--out-questions", str(work / "train_q.jsonl"), "--context", "all"]
    c0 = _child_cpu()
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        sys.exit(f"build failed: {res.stderr}")
    print(f"build (CLI): {len(studies):,} studies, training JSON + questions JSONL in {wall:.2f} s wall "
          f"(CPU {_child_cpu() - c0:.2f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["pairs", "sections", "build", "all"])
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "libra-bench-data")
    ap.add_argument("--subjects", type=int, default=MIMIC_SUBJECTS)
    ap.add_argument("--snippet-subjects", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reports", type=int, default=MIMIC_REPORTS)
    ap.add_argument("--ref-reports", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if args.what in ("pairs", "all"):
        bench_pairs(args.workdir, args.subjects, args.snippet_subjects, args.repeats)
    if args.what in ("build", "all"):
        bench_build(args.workdir)
    if args.what in ("sections", "all"):
        bench_sections(args.workdir, args.reports, args.workers, args.ref_reports)


if __name__ == "__main__":
    main()
