"""GREEN and CRIMSON in libra equal the judges' own code, pair by pair, on tiny random judges.

``tests/data/judge_reference.json`` holds what the authors' GREEN (Stanford-AIMI/GREEN d72c195 on
transformers 4.57) and crimson-score 0.2.2 (transformers 5) produced on tiny random judges saved under
the published hub ids (``tests/reference/generate_judges.py``): the token ids each row was fed and
generated, the responses, per-pair scores and means, and their parsers' verdicts on crafted outputs
(``tests/reference/judge_cases.py``; random judges only write garbage). The same judges are rebuilt
here from the same seeds, laid out as a Hugging Face cache, and run through libra offline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
REF = json.loads((HERE / "data" / "judge_reference.json").read_text(encoding="utf-8"))
sys.path.insert(0, str(HERE / "reference"))
from judge_cases import GREEN_CRAFTED, crimson_crafted  # noqa: E402

IDS = {"radllama2": "StanfordAIMI/GREEN-radllama2-7b", "radphi2": "StanfordAIMI/GREEN-RadPhi2",
       "crimson": "rajpurkarlab/medgemma-4b-it-crimson", "crimson_guidelines": "google/medgemma-4b-it"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Path:
    from tests.builders.judges import build_judges

    root = tmp_path_factory.mktemp("judges")
    build_judges(root, shared_dir / "fixtures" / "tokenizer")
    return root / "hf" / "hub"


def _run(name: str, hub: Path, **kw):  # noqa: ANN003, ANN202
    from libra_cli.metrics.cache import OutputCache
    from libra_cli.metrics.judges.run import JudgeOptions, run

    judge = "green" if name.startswith("rad") else "crimson"
    pairs = REF["pairs"][name]
    options = JudgeOptions(model=IDS[name], progress=False, **kw)
    return run(judge, pairs["refs"], pairs["hyps"], options, kw.pop("cache", None) or OutputCache(None), hub)


# ----------------------------------------------------------------- parsers on well-formed and broken outputs
def test_green_parser_equals_the_authors_on_crafted_outputs() -> None:
    from libra_cli.metrics.judges import green

    cases = REF["green_parser"]
    assert [c["text"] for c in cases] == GREEN_CRAFTED
    for case in cases:
        t = case["text"]
        assert green.clean_responses(t) == case["clean"], t
        assert green.compute_green(t) == case["green"], t
        assert [list(green.parse_error_counts(t, c)) for c in green.CATEGORIES] == case["counts"], t
    scores = {c["green"] for c in cases}
    assert len(scores) > 4 and 0 in scores  # the crafted outputs reach every branch, not only 0
    real = [green.score(t) for t in GREEN_CRAFTED[:5]]  # GREEN-RadLlama2-7b's own outputs (the authors' test)
    assert [r.score for r in real] == [c["green"] for c in cases[:5]] and len({r.score for r in real}) == 5


def test_crimson_parser_and_score_equal_the_package_on_crafted_outputs() -> None:
    from libra_cli.metrics.judges import crimson

    cases = REF["crimson_parser"]
    assert [c["text"] for c in cases] == crimson_crafted()
    for case in cases:
        res = crimson.score(case["text"])
        if "parsed" in case:
            assert crimson.parse_json_response(case["text"]) == case["parsed"]
        if "error" in case:
            assert res.score is None and not res.parsed, case["text"]
        else:
            assert res.score == case["score"], case["text"]
            assert res.details["metrics"] == case["metrics"]
            assert res.details["error_counts"] == case["error_counts"]
            assert res.details["weighted_error_counts"] == case["weighted_error_counts"]
    assert sum("error" not in c for c in cases) >= 10 and sum("error" in c for c in cases) >= 5
    assert len({c.get("score") for c in cases}) >= 5  # negative, zero, partial and perfect scores


def test_crimson_prompts_equal_the_package() -> None:
    from libra_cli.metrics.judges import crimson, crimson_prompt

    for name in ("crimson", "crimson_guidelines"):
        pairs, ref = REF["pairs"][name], REF[name]
        ours = [crimson.messages(r, h, IDS[name])[1]["content"] for r, h in zip(pairs["refs"], pairs["hyps"], strict=True)]
        assert ours == ref["prompts"], name
    assert "Examples of typical classifications" in REF["crimson_guidelines"]["prompts"][0]
    assert "Examples of typical classifications" not in REF["crimson"]["prompts"][0]  # MedGemmaCRIMSON: no guidelines
    assert crimson_prompt.build_prompt("ref", "pred", patient_context={"Age": "82", "Indication": "x"}) == \
        REF["crimson_prompt_with_context"]
    judge = crimson.Crimson()
    judge.contexts = [{"Age": "82", "Indication": "x"}]  # what JudgeOptions(contexts=...) sets
    messages = []
    judge_tok = type("Tok", (), {"apply_chat_template": lambda self, m, **kw: messages.append(m) or {"input_ids": [0]}})()
    judge.prompt_ids(judge_tok, ["ref"], ["pred"], IDS["crimson_guidelines"])
    assert messages[0][1]["content"] == REF["crimson_prompt_with_context"] and messages[0][0]["content"] == crimson.SYSTEM


# ----------------------------------------------------------------- the tiny judges end to end
@pytest.mark.parametrize("name", ["radllama2", "radphi2"])
def test_green_equals_the_authors_pair_by_pair(name: str, hub: Path) -> None:
    """Token ids in, responses, scores and the mean: the authors' code on the CPU, batches of 8 (both in float32:
    the authors' float16, libra's default too, is checked as a setting)."""
    from transformers import AutoTokenizer

    from libra_cli.metrics.judges.green import Green
    from libra_cli.metrics.judges.run import resolve

    ref, pairs = REF[name], REF["pairs"][name]
    judge = Green()
    assert ref["package_dtype"] == "torch.float16" == "torch." + judge.models[name.replace("radllama2", "radllama2-7b")].dtype
    res = _run(name, hub, dtype="float32")
    assert res.stats["dtype"] == "float32" == ref["dtype"].removeprefix("torch.")
    folder = resolve("green", _options(IDS[name]), hub)[0]
    tok = judge.prepare_tokenizer(AutoTokenizer.from_pretrained(folder, **judge.tokenizer_kwargs))
    assert judge.prompt_ids(tok, pairs["refs"], pairs["hyps"], IDS[name]) == [c["input_ids"] for c in ref["calls"]]
    assert res.responses == ref["responses"]
    assert [r.score for r in res.results] == ref["scores"]
    assert sum(r.score for r in res.results) / len(res.results) == pytest.approx(ref["mean"], abs=1e-15)
    counts = [r.details["significant_errors"] + [r.details["matched_findings"]] for r in res.results]
    assert counts == ref["error_counts"]
    assert any(len(c["generated"]) > 1 for c in ref["calls"])  # the judge generated text, not only a stop token


def _options(model: str):  # noqa: ANN202
    from libra_cli.metrics.judges.run import JudgeOptions

    return JudgeOptions(model=model, progress=False)


@pytest.mark.parametrize("name", ["crimson", "crimson_guidelines"])
def test_crimson_equals_the_package_pair_by_pair(name: str, hub: Path) -> None:
    """MedGemmaCRIMSON's id (prompt without guidelines) and another judge (with them); both ship a generation config."""
    from transformers import AutoTokenizer

    from libra_cli.metrics.judges.crimson import Crimson
    from libra_cli.metrics.judges.run import generation_config, resolve

    ref, pairs = REF[name], REF["pairs"][name]
    assert ref["has_generation_config"]
    judge = Crimson()
    assert ref["package_dtype"] == "torch.bfloat16" == "torch." + judge.models[judge.default_model].dtype
    res = _run(name, hub, batch_size=ref["batch_size"], dtype="float32")
    assert res.stats["dtype"] == "float32" == ref["dtype"].removeprefix("torch.")
    folder = resolve("crimson", _options(IDS[name]), hub)[0]
    tok = judge.prepare_tokenizer(AutoTokenizer.from_pretrained(folder))
    prompts = judge.prompt_ids(tok, pairs["refs"], pairs["hyps"], IDS[name])
    assert prompts == [c["input_ids"] for c in ref["calls"]]
    reqs = judge.requests(prompts, tok, generation_config(folder))
    assert {r.max_new_tokens for r in reqs} == ({40} if name == "crimson_guidelines" else {24})
    assert res.responses == ref["responses"]
    assert [r.score for r in res.results] == ref["scores"]
    assert all(not r.parsed for r in res.results)  # random judges write no JSON: every pair is a failed pair


def test_crimson_without_a_generation_config_is_greedy_for_the_package_s_8192_tokens() -> None:
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from libra_cli.metrics.judges.crimson import generation_request

    tok = SimpleNamespace(eos_token_id=1)
    req = generation_request(tok, None, 100)
    assert (req.max_new_tokens, req.do_sample, req.eos) == (REF["crimson_default_max_new_tokens"], False, (1,))
    derived = GenerationConfig(eos_token_id=[1, 106], do_sample=True)
    derived._from_model_config = True  # what transformers derives from config.json: the package ignores it
    assert generation_request(tok, derived, 100).max_new_tokens == 8192
    shipped = GenerationConfig(eos_token_id=[1, 106], do_sample=True, top_k=64, top_p=0.95)  # MedGemma's own
    req = generation_request(tok, shipped, 100)
    assert (req.max_new_tokens, req.do_sample, req.top_k, req.eos) == (20, True, 64, (1, 106))


def test_batched_equals_one_at_a_time_and_the_cache_resumes(hub: Path, tmp_path: Path) -> None:
    """An interrupted run keeps its finished chunks; the rest, one pair at a time, equals the batched reference;
    a rerun generates nothing."""
    from libra_cli.metrics.cache import OutputCache
    from libra_cli.metrics.judges.hf import HfGenerator
    from libra_cli.metrics.judges.run import JudgeOptions, resolve, run

    pairs = REF["pairs"]["radllama2"]
    refs, hyps = pairs["refs"][:8], pairs["hyps"][:8]

    class Failing(HfGenerator):
        calls = 0

        def generate(self, prompts, requests):  # noqa: ANN001, ANN202
            Failing.calls += 1
            if Failing.calls > 1:
                raise KeyboardInterrupt  # Ctrl-C during the second chunk
            return super().generate(prompts, requests)

    cache = OutputCache(tmp_path / "judge.sqlite")
    options = JudgeOptions(model=IDS["radllama2"], batch_size=1, dtype="float32", progress=False)
    folder = resolve("green", options, hub)[0]
    with pytest.raises(KeyboardInterrupt):  # saved chunks: 2 batches of 1; the 2nd chunk is interrupted
        run("green", refs, hyps, options, cache, hub, generator=Failing(folder, "float32", batch_size=1))
    resumed = run("green", refs, hyps, options, cache, hub)
    assert resumed.stats["cached"] == 2 and resumed.stats["generated"] == 6
    # one pair at a time == the package's batch of 8 (== libra's batch of 8 with the shared prefix, test above)
    assert resumed.responses == REF["radllama2"]["responses"][:8]
    again = run("green", refs, hyps, options, cache, hub)
    assert again.stats["generated"] == 0 and again.responses == resumed.responses


def test_eval_cli_scores_green_and_crimson_offline(hub: Path, tmp_path: Path) -> None:
    """``libra eval --metrics green,crimson`` on the tiny judges: the packages' numbers, notes, exit 0."""
    pairs = REF["pairs"]["crimson"]
    n = 4
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"question_id": str(i), "reference": r}) + "\n"
                                              for i, r in enumerate(pairs["refs"][:n])))
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"question_id": str(i), "prediction": h}) + "\n"
                                              for i, h in enumerate(pairs["hyps"][:n])))
    env = {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "LIBRA_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "libra_cli", "eval", str(tmp_path / "r.jsonl"), str(tmp_path / "p.jsonl"),
                          "--metrics", "crimson,green", "--judge-batch-size", "4", "--judge-dtype", "float32", "--json"],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert res["metrics"] == ["green", "crimson"]
    assert "GREEN" in res["raw"] and "CRIMSON" not in res["raw"]  # no CRIMSON pair parsed: no mean, as the package
    assert any("could not be parsed" in n for n in res["notes"]) and any("pairs/s" in n or "judged" in n for n in res["notes"])
    assert res["versions"]["crimson-score"] == "0.2.2 (ported)"


def test_offline_without_the_judge_is_one_line_naming_the_download(tmp_path: Path) -> None:
    (tmp_path / "r.jsonl").write_text('{"question_id": "1", "reference": "No effusion."}\n')
    (tmp_path / "p.jsonl").write_text('{"question_id": "1", "prediction": "No effusion."}\n')
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    for metrics, key in (("green", "green"), ("crimson", "crimson")):
        out = subprocess.run([sys.executable, "-m", "libra_cli", "eval", str(tmp_path / "r.jsonl"), str(tmp_path / "p.jsonl"),
                              "--metrics", metrics], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 2
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and f"libra eval download --model {key}" in lines[0] and "Traceback" not in out.stderr


def test_suite_skips_a_judge_without_a_gpu_and_names_what_to_do(hub: Path) -> None:
    from libra_cli.metrics.api import _preflight, make_scorers

    scorers = make_scorers(cache=False)
    scorers.options.hub_cache = hub
    keep, skipped = _preflight(["green"], set(), False, scorers, "radgraph")
    assert keep == [] and "no CUDA GPU" in skipped["green"] and "--metrics" in skipped["green"]
    keep, skipped = _preflight(["green", "crimson"], {"green", "crimson"}, False, scorers, "radgraph")
    assert keep == ["green", "crimson"] and not skipped


def test_openai_engine_is_checked_without_a_server_or_the_weights(hub: Path, tmp_path: Path) -> None:
    """The openai engine needs the judge's tokenizer locally, not its weights; without the client: one line."""
    import importlib.util
    import shutil

    from libra_cli.errors import InputError
    from libra_cli.metrics.judges.run import JudgeOptions, check, resolve

    folder = Path(resolve("green", JudgeOptions(model=IDS["radllama2"]), hub)[0])
    light = tmp_path / "tokenizer-only"
    shutil.copytree(folder, light, ignore=shutil.ignore_patterns("*.safetensors"))
    options = JudgeOptions(engine="openai", url="http://127.0.0.1:9/v1", model=str(light))
    if importlib.util.find_spec("openai") is None:
        with pytest.raises(InputError, match="pip install openai"):
            check("green", options, hub)
    else:
        check("green", options, hub)
    with pytest.raises(InputError, match="libra eval download"):  # hf needs the weights of a hub judge
        check("green", JudgeOptions(model="StanfordAIMI/GREEN-radllama2-7b"), tmp_path / "empty-hub")


def test_judge_options_are_checked_before_anything_runs() -> None:
    from libra_cli.errors import InputError
    from libra_cli.metrics.judges.run import JudgeOptions, model_for, scorer_key

    for bad in (JudgeOptions(engine="tgi"), JudgeOptions(engine="openai"), JudgeOptions(url="http://x/v1"),
                JudgeOptions(dtype="int8")):
        with pytest.raises(InputError):
            bad.validate()
    assert scorer_key("green", "radphi2") == "green:radphi2" and scorer_key("green", None) == "green"
    assert scorer_key("crimson", "radphi2") == "crimson"  # another judge's variant leaves this one at its default
    assert model_for("crimson", "radphi2") is None and model_for("green", "/some/folder") == "/some/folder"


def test_green_budget_follows_the_authors_padded_batches() -> None:
    """max_length=2048 counts the longest prompt of each batch of 8 in input order (at least one token)."""
    from types import SimpleNamespace

    from libra_cli.metrics.judges.green import Green

    prompts = [[1] * n for n in (100, 1500, 300, 20, 20, 20, 20, 20, 2048, 10)]
    reqs = Green().requests(prompts, SimpleNamespace(eos_token_id=2), None)
    assert [r.max_new_tokens for r in reqs] == [548] * 8 + [1, 1]
