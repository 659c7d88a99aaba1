"""Run the judges' own code on tiny random judges (executed by a reference venv; standalone, no libra).

    python judges_run.py green   HF_HOME PAIRS_JSON OUT_JSON GREEN_CHECKOUT   # transformers 4.57 venv
    python judges_run.py crimson HF_HOME PAIRS_JSON OUT_JSON                  # crimson-score 0.2.2 venv

HF_HOME holds the tiny judges under the published hub ids. GREEN is the authors' code
(Stanford-AIMI/GREEN ``green_score``, imported from the checkout as it is); CRIMSON is the
``crimson-score`` package. Neither file is edited: ``model.generate`` is wrapped at run time to
record the token ids each row was fed and generated. Both run on the CPU (GREEN's ``cpu=True``;
CRIMSON's pipeline uses ``device_map="auto"``, which is the CPU here).
"""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import version
from pathlib import Path

KIND, HF_HOME, PAIRS, OUT = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
os.environ["HF_HOME"] = str(HF_HOME)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from judge_cases import GREEN_CRAFTED, crimson_crafted  # noqa: E402

data = json.loads(PAIRS.read_text())
REQUESTED: dict = {}  # the dtype the package asked for (before float32_everywhere)
result: dict = {"versions": {p: version(p) for p in ("transformers", "torch", "numpy")}}


def record(model: torch.nn.Module, calls: list) -> None:
    """Wrap ``model.generate`` (this object only) to keep each row's unpadded input and its new tokens."""
    inner = model.generate

    def generate(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        out = inner(*args, **kwargs)
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        for row, m, o in zip(ids.tolist(), mask.tolist(), out.tolist(), strict=True):
            calls.append({"input_ids": [t for t, k in zip(row, m, strict=True) if k], "generated": o[len(row):]})
        return out

    model.generate = generate


def float32_everywhere() -> None:
    """Load every model in float32 (the one run-time change to the packages' settings).

    The packages load GREEN in float16 (also on the CPU) and CRIMSON in bfloat16; libra's default
    dtypes are those (checked by the tests), but equal greedy text from two programs whose batches are
    shaped differently needs float32: in half precision, random tiny judges have logits close enough
    for summation order to pick another token now and then.
    """
    import transformers

    orig_model = transformers.AutoModelForCausalLM.from_pretrained
    orig_pipeline = transformers.pipeline

    def model(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        REQUESTED.setdefault("dtype", str(kwargs.get("torch_dtype", kwargs.get("dtype"))))
        kwargs.pop("torch_dtype", None)
        kwargs["dtype"] = torch.float32
        return orig_model(*args, **kwargs)

    def pipeline(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        REQUESTED.setdefault("dtype", str(kwargs.get("dtype")))
        kwargs["dtype"] = torch.float32
        return orig_pipeline(*args, **kwargs)

    transformers.AutoModelForCausalLM.from_pretrained = model
    transformers.pipeline = pipeline


def green_part(checkout: Path) -> None:
    sys.path.insert(0, str(checkout))
    from green_score import GREEN

    result["versions"]["green_score"] = "Stanford-AIMI/GREEN@d72c195"
    for name, model_id in (("radllama2", "StanfordAIMI/GREEN-radllama2-7b"), ("radphi2", "StanfordAIMI/GREEN-RadPhi2")):
        pairs = data[name]
        REQUESTED.clear()
        scorer = GREEN(model_id, output_dir=".", cpu=True, compute_summary_stats=False)
        calls: list = []
        record(scorer.model, calls)
        _, _, scores, _, df = scorer(pairs["refs"], pairs["hyps"])
        result[name] = {
            "model": model_id, "dtype": str(scorer.model.dtype), "package_dtype": REQUESTED["dtype"], "calls": calls,
            "responses": list(df["green_analysis"]), "scores": [float(s) for s in scores],
            # compute_summary's mean and std (its representative sentences need a sentence-transformers model)
            "mean": float(np.mean(scores)), "std": float(np.std(scores)),
            "error_counts": df[list(scorer.sub_categories) + ["Matched Findings"]].to_numpy().tolist(),
        }
    from green_score.utils import clean_responses

    parser = GREEN(None, cpu=True, compute_summary_stats=False)
    result["green_parser"] = [
        {"text": t, "clean": clean_responses(t), "green": parser.compute_green(t),
         "counts": [list(parser.parse_error_counts(t, c)) for c in parser.categories]}
        for t in GREEN_CRAFTED
    ]


def crimson_part() -> None:
    from CRIMSON import CRIMSONScore
    from CRIMSON.prompt_parts import build_prompt

    result["versions"]["crimson-score"] = version("crimson-score")
    for name, model_id, batch in (("crimson", "rajpurkarlab/medgemma-4b-it-crimson", 4),
                                  ("crimson_guidelines", "google/medgemma-4b-it", 2)):
        pairs = data[name]
        REQUESTED.clear()
        scorer = CRIMSONScore(api="hf", model_name=model_id, device="cpu")
        calls: list = []
        record(scorer.pipe.model, calls)
        responses: list = []
        inner = scorer._chat_completion_batch

        def batch_fn(prompts, batch_size=1, _inner=inner, _out=responses):  # noqa: ANN001, ANN202
            got = _inner(prompts, batch_size=batch_size)
            _out.extend(got)
            return got

        scorer._chat_completion_batch = batch_fn
        prompts = [scorer._build_evaluation_prompt(r, h) for r, h in zip(pairs["refs"], pairs["hyps"], strict=True)]
        results = scorer.evaluate_batch(pairs["refs"], pairs["hyps"], batch_size=batch)
        scores = [None if r is None else r["crimson_score"] for r in results]
        valid = [s for s in scores if s is not None]
        result[name] = {
            "model": model_id, "dtype": str(scorer.pipe.model.dtype), "package_dtype": REQUESTED["dtype"], "batch_size": batch, "prompts": prompts,
            "has_generation_config": scorer._has_generation_config, "calls": calls, "responses": responses,
            "scores": scores, "mean": (sum(valid) / len(valid)) if valid else None,
        }
    result["crimson_default_max_new_tokens"] = CRIMSONScore.DEFAULT_MAX_NEW_TOKENS  # the no-generation-config path
    result["crimson_prompt_with_context"] = build_prompt("ref", "pred", patient_context={"Age": "82", "Indication": "x"})
    parsed = []
    for text in crimson_crafted():
        try:
            ev = CRIMSONScore._parse_json_response(text)
        except Exception as exc:  # noqa: BLE001
            parsed.append({"text": text, "error": type(exc).__name__})
            continue
        try:
            res = CRIMSONScore._calculate_crimson(None, ev)
            parsed.append({"text": text, "parsed": ev, "score": res["crimson_score"], "metrics": res["metrics"],
                           "error_counts": res["error_counts"], "weighted_error_counts": res["weighted_error_counts"]})
        except Exception as exc:  # noqa: BLE001
            parsed.append({"text": text, "parsed": ev, "error": type(exc).__name__})
    result["crimson_parser"] = parsed


float32_everywhere()
if KIND == "green":
    green_part(Path(sys.argv[5]))
else:
    crimson_part()
OUT.write_text(json.dumps(result))
