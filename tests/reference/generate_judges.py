"""Regenerate ``tests/data/judge_reference.json``: the judges' own code on tiny random judges.

GREEN is the authors' code (not on PyPI; it calls ``batch_encode_plus``, gone in transformers 5), so
it runs in a transformers-4.57 venv from a checkout of Stanford-AIMI/GREEN (commit d72c195).
crimson-score 0.2.2 declares Python >= 3.12; its code runs on 3.11, so it is installed without its
declared dependencies beside the ones its transformers path uses:

    python3 -m venv /tmp/green && /tmp/green/bin/pip install torch==2.13.0 "transformers==4.57.*" datasets \
        "pandas<3" accelerate sentencepiece protobuf sentence-transformers scikit-learn scipy
    python3 -m venv /tmp/crimson && /tmp/crimson/bin/pip install torch==2.13.0 && \
        /tmp/crimson/bin/pip install --no-deps --ignore-requires-python crimson-score==0.2.2 && \
        /tmp/crimson/bin/pip install "transformers>=5.3" accelerate numpy pandas jinja2 openai
    python tests/reference/generate_judges.py --green-python /tmp/green/bin/python \
        --crimson-python /tmp/crimson/bin/python --green-checkout GREEN_CHECKOUT
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
OUT = HERE.parent / "data" / "judge_reference.json"
SHARED_TOKENIZER = HERE.parents[2] / "shared" / "fixtures" / "tokenizer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--green-python", required=True)
    parser.add_argument("--crimson-python", required=True)
    parser.add_argument("--green-checkout", required=True, type=Path)
    parser.add_argument("--tokenizer", type=Path, default=SHARED_TOKENIZER, help="the shared Llama tokenizer fixture")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--work", type=Path, default=None, help="keep the tiny judges here")
    args = parser.parse_args()
    from tests.builders.judges import build_judges, judge_pairs

    pairs = judge_pairs()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if not (work / "hf").is_dir():
            build_judges(work, args.tokenizer)
        (work / "pairs.json").write_text(json.dumps(pairs))
        result: dict = {}
        for kind, python, extra in (("green", args.green_python, [str(args.green_checkout)]),
                                    ("crimson", args.crimson_python, [])):
            raw = work / f"{kind}.json"
            subprocess.run([python, str(HERE / "judges_run.py"), kind, str(work / "hf"), str(work / "pairs.json"),
                            str(raw), *extra], check=True)
            part = json.loads(raw.read_text())
            result.setdefault("versions", {})[kind] = part.pop("versions")
            result.update(part)
    result["pairs"] = pairs
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
