"""Studies from a PACS: how fast ``libra batch --dicomweb`` finds and fetches them, against baselines in the same run.

A local Orthanc (``tests.builders.orthanc``) holds synthetic patients, each with three CR/DX studies
(PA + lateral) on three dates. Measured, rounds alternating so machine load hits every method alike:

- finding the studies (``--prior auto``: metadata of the study, the patient's studies, the prior's metadata)
  with 1 thread (the baseline) and with 4 threads (``--workers 4`` in ``libra batch``);
- fetching both chosen images over WADO-RS and decoding them, against decoding the same files from disk
  (the cost of the PACS round trip per study).

Orthanc on loopback answers in well under a millisecond, which a hospital PACS does not; ``--latency-ms``
adds that many milliseconds before every request (a network round trip) to see what the threads buy there.

    python benchmarks/bench_pacs.py [--patients 30] [--rounds 3] [--latency-ms 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _archive(folder: Path, patients: int) -> tuple[list[str], dict[str, tuple[Path, Path | None]]]:
    """Write the studies; returns the study UIDs (newest of each patient last) and, per study, its files."""
    from tests.builders.dicom import Spec, make_instance

    studies, files = [], {}
    for p in range(patients):
        prior_file = None
        for s, date in enumerate(("20220105", "20230210", "20240315")):
            names = []
            for view, series in (("PA", 1), ("LATERAL", 2)):
                name = f"p{p}-s{s}-{view}"
                ds = make_instance(Spec(f"P{p:04d}", f"p{p}s{s}", date, "101500", view, series=series, seed=p * 7 + s),
                                   name)
                path = folder / f"{name}.dcm"
                ds.save_as(path, enforce_file_format=True)
                names.append(path)
            studies.append(str(ds.StudyInstanceUID))
            files[studies[-1]] = (names[0], prior_file)
            prior_file = names[0]
    return studies, files


def _time(fn) -> float:  # noqa: ANN001
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=0.0, help="added before every HTTP request")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.latency_ms > 0:
        import requests

        plain = requests.Session.request

        def slow(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            time.sleep(args.latency_ms / 1000)
            return plain(self, *a, **kw)

        requests.Session.request = slow

    from libra_cli.images import load_image
    from libra_cli.pacs.client import connect
    from libra_cli.pacs.study import Studies, fetch_instance, resolve
    from tests.builders.orthanc import Orthanc, available

    if available():
        sys.exit(f"bench_pacs needs Orthanc: {available()}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-pacs-"))
    (tmp / "files").mkdir()
    studies, files = _archive(tmp / "files", args.patients)
    with Orthanc(tmp / "orthanc") as pacs:
        pacs.upload(*sorted((tmp / "files").glob("*.dcm")))
        client = connect(pacs.dicomweb)

        def find(workers: int) -> list:
            lookup = Studies(client)  # a fresh cache: every round asks the server
            with ThreadPoolExecutor(workers) as pool:
                return list(pool.map(lambda uid: resolve(lookup, uid, "auto"), studies))

        resolved = find(1)
        assert sum(r.prior is not None for r in resolved) == 2 * args.patients  # the first study of each has none

        def fetch_decode() -> None:
            for r in resolved:
                for im in (r.current, r.prior):
                    if im is not None:
                        load_image(fetch_instance(client, im))

        def decode_files() -> None:
            for uid in studies:
                for f in files[uid]:
                    if f is not None:
                        load_image(str(f))

        methods = {"find studies, 1 thread (baseline)": lambda: find(1), "find studies, 4 threads": lambda: find(4),
                   "decode from disk (baseline)": decode_files, "fetch over WADO-RS + decode": fetch_decode}
        times: dict[str, list[float]] = {k: [] for k in methods}
        for _ in range(args.rounds):
            for name, fn in methods.items():
                times[name].append(_time(fn))
    n = len(studies)
    rows = {k: {"median_s": statistics.median(v), "studies_per_s": n / statistics.median(v)} for k, v in times.items()}
    ratios = {
        "find: 4 threads / 1 thread (speed-up)": rows["find studies, 1 thread (baseline)"]["median_s"]
        / rows["find studies, 4 threads"]["median_s"],
        "images: WADO-RS + decode / disk decode (cost)": rows["fetch over WADO-RS + decode"]["median_s"]
        / rows["decode from disk (baseline)"]["median_s"],
    }
    print(f"{n} studies ({args.patients} patients x 3), Orthanc on loopback + {args.latency_ms:g} ms per request, "
          f"median of {args.rounds} rounds")
    for k, v in rows.items():
        print(f"  {k:40s} {v['median_s']:7.3f} s  {v['studies_per_s']:8.1f} studies/s")
    for k, v in ratios.items():
        print(f"  {k:48s} {v:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"studies": n, "rounds": args.rounds, "latency_ms": args.latency_ms,
                                         "rows": rows, "ratios": ratios},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
