"""Regenerate ``tests/data/scorer_reference.json``: the reference packages' outputs on tiny models.

The reference packages (radgraph 0.1.18, f1chexbert 0.0.2, RaTEScore 0.6.0, bert-score 0.3.13,
fast-bleu, CXR-Report-Metric) need transformers 4.x / scikit-learn < 1.6, so they run in a separate
venv; libra's tests then compare its adapters (transformers 5) against this file.

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 "transformers==4.57.*" \
        radgraph==0.1.18 f1chexbert==0.0.2 "scikit-learn<1.6" bert-score==0.3.13 fast-bleu "pandas<3" statsmodels
    /tmp/ref/bin/pip install --no-deps RaTEScore==0.6.0 medspacy==1.3.1 medspacy_quickumls==3.2
    /tmp/ref/bin/pip install PyRuSH==1.0.13 "spacy<3.8" pysbd==0.3.4 jsonschema unidecode pysimstring medspacy_unqlite six
    python tests/reference/generate.py --ref-python /tmp/ref/bin/python --cxr-report-metric CHECKOUT

CHECKOUT is a clone of rajpurkarlab/CXR-Report-Metric (commit 9c9ecad; not vendored here).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.builders: this repo's, not a package's `tests`

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "data" / "scorer_reference.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref-python", required=True, help="python of the reference venv")
    parser.add_argument("--cxr-report-metric", required=True, type=Path, help="CXR-Report-Metric checkout")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--work", type=Path, default=None, help="keep the tiny models and partial results here (resumable)")
    args = parser.parse_args()
    from tests.builders.reports import scorer_pairs
    from tests.builders.scorers import build_all

    refs, hyps = scorer_pairs()
    with tempfile.TemporaryDirectory() as tmp:
        tiny = args.work or Path(tmp)
        if not (tiny / "radgraph.tar.gz").exists():
            build_all(tiny)
        pairs = tiny / "pairs.json"
        pairs.write_text(json.dumps({"refs": refs, "hyps": hyps}))
        raw = tiny / "reference.json"
        subprocess.run([args.ref_python, str(HERE / "reference_run.py"), str(tiny), str(pairs), str(args.cxr_report_metric),
                        str(raw)], check=True)
        result = json.loads(raw.read_text())
    result.pop("radgraph_annotations", None)  # large; the rewards and entity/relation F1 pin them
    result["pairs"] = {"refs": refs, "hyps": hyps}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out} ({len(refs)} pairs)", file=sys.stderr)


if __name__ == "__main__":
    main()
