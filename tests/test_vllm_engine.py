"""vLLM engine (``pip install 'libra-cli[vllm]'``): same greedy token ids and text as the transformers path.

Marked ``vllm`` and skipped when vLLM cannot be imported; CI runs them in their own step
(``pytest -m vllm``, docs/engines.md). vLLM starts with ``enforce_eager`` here (no torch.compile:
seconds instead of minutes to start on a CPU).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.vllm_support import N_STUDIES, make_images, make_models, studies, vllm_importable

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not vllm_importable(), reason="vLLM is not installed")]

MAX_NEW = 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path, cxr_dir: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("vllm-models")
    return {"models": make_models(root, fixtures_dir), "images": make_images(root / "images", cxr_dir)}


def _hf_reports(folder: Path, samples: list[Any], settings: Any) -> list[Any]:
    from libra_cli.checkpoint.load import load_model
    from libra_cli.generation import generate

    lm = load_model(str(folder), device="cpu", dtype="float32")
    return [r for i in range(0, len(samples), 8) for r in generate(lm, samples[i: i + 8], settings)]


def _vllm_reports(vm: Any, samples: list[Any], settings: Any) -> list[Any]:
    """Through the engine module's own request / params / report builders (what the engine's session calls)."""
    from libra_cli.batch.images import decode_image
    from libra_cli.engines import vllm as E
    from libra_cli.generation import prompt_ids

    prompts = [prompt_ids(vm, s) for s in samples]
    reqs = []
    for s, p in zip(samples, prompts, strict=True):
        prior = decode_image(s.prior, vm) if s.prior and vm.uses_prior else None
        reqs.append(E.request(vm, s, decode_image(s.current, vm), prior, p))
    outs = vm.llm.generate([E.engine_prompt(r) for r in reqs],
                           E.sampling_params(vm, settings, prompts[0].stop), use_tqdm=False)
    return [E.report(vm, s, p, [(list(o.outputs[0].token_ids), None)], settings)
            for s, p, o in zip(samples, prompts, outs, strict=True)]


@pytest.mark.parametrize("kind", ["tac", "clip"])
def test_greedy_ids_equal_transformers(tiny: dict[str, Any], kind: str, tmp_path: Path) -> None:
    """32 studies (16 with prior, 16 current-only): ids, text and prompt as ``--engine hf``; then the batch runner."""
    from libra_cli.engines.vllm import VllmEngine, load_vllm_model
    from libra_cli.generation import GenerationSettings, prompt_ids
    from libra_cli.prompts import expand_image_tokens
    from libra_cli.vllm_engine.options import VllmOptions

    folder = tiny["models"][kind]
    samples = studies(tiny["images"])
    settings = GenerationSettings(max_new_tokens=MAX_NEW)
    hf = _hf_reports(folder, samples, settings)
    vm = load_vllm_model(str(folder), dtype="float32", options=VllmOptions(enforce_eager=True))
    try:
        # the prompt vLLM gets is libra's, with the image marker as the plugin's placeholder id
        for s in samples[:4]:
            text, ids, _ = prompt_ids(vm, s)
            mine = vm.vtok.encode_study(text)
            assert mine.count(vm.placeholder_id) == 1
            assert expand_image_tokens([-200 if t == vm.placeholder_id else t for t in mine], vm.num_image_tokens) == ids
        out = _vllm_reports(vm, samples, settings)
        assert len(out) == N_STUDIES
        for a, b in zip(hf, out, strict=True):
            assert b.token_ids == a.token_ids, (a.id, a.token_ids, b.token_ids)
            assert b.text == a.text
            assert b.prompt == a.prompt
        # the engine's own generate (all studies in flight at once; one study streamed) gives the same
        engine = VllmEngine(vm)
        assert [r.token_ids for r in engine.generate(samples[:6], settings)] == [r.token_ids for r in hf[:6]]
        seen: list[str] = []
        streamed = engine.generate(samples[:1], settings, on_text=seen.append)[0]
        assert streamed.text == hf[0].text and seen and hf[0].text.startswith(seen[0])
        # an EOS-like stop keeps the stop id, as generate() returns it (libra's trim_at_eos)
        stop_at = hf[0].token_ids[2]
        first = _vllm_with_stop(vm, samples[0], stop_at)
        assert first == hf[0].token_ids[: hf[0].token_ids.index(stop_at) + 1]
        if kind == "tac":
            _batch_runner_matches(vm, folder, tiny["images"], tmp_path)
    finally:
        vm.close()


@pytest.mark.parametrize("backbone", ["libra_mistral", "libra_qwen2", "libra_qwen3", "libra_gemma", "libra_phi3"])
def test_other_backbones_equal_transformers(tiny: dict[str, Any], backbone: str, tmp_path: Path) -> None:
    """The plugin maps every Libra backbone to vLLM's own model for it (4 studies, 8 tokens each)."""
    from libra_cli.engines.vllm import load_vllm_model
    from libra_cli.generation import GenerationSettings
    from libra_cli.vllm_engine.options import VllmOptions
    from tests.builders.tiny import make_tiny_libra
    from tests.vllm_support import HEAD64

    tower = tiny["models"]["tac"].parent / "tiny-rad-dino"
    folder = make_tiny_libra(tmp_path / backbone, tiny["models"]["tac"], backbone=backbone, connector="TAC",
                             tower=str(tower), seed=5, **HEAD64, head_dim=64)
    samples = studies(tiny["images"])[:4]
    settings = GenerationSettings(max_new_tokens=8)
    hf = _hf_reports(folder, samples, settings)
    vm = load_vllm_model(str(folder), dtype="float32", options=VllmOptions(enforce_eager=True))
    try:
        assert [r.token_ids for r in _vllm_reports(vm, samples, settings)] == [r.token_ids for r in hf]
    finally:
        vm.close()


def _vllm_with_stop(vm: Any, sample: Any, stop_id: int) -> list[int]:
    from vllm import SamplingParams

    from libra_cli.batch.images import decode_image
    from libra_cli.engines import vllm as E

    cur = decode_image(sample.current, vm)
    prior = decode_image(sample.prior, vm) if sample.prior else None
    req = E.engine_prompt(E.request(vm, sample, cur, prior))
    out = vm.llm.generate([req], SamplingParams(temperature=0, max_tokens=MAX_NEW, stop_token_ids=[stop_id]),
                          use_tqdm=False)
    return list(out[0].outputs[0].token_ids)


def _questions(images: list[Path], path: Path) -> None:
    rows = []
    for i in range(10):
        img = [str(images[i])] + ([str(images[(i * 3 + 1) % len(images)])] if i % 2 == 0 else [])
        rows.append({"question_id": i, "image": img} | ({"text": "Any change?"} if i == 3 else {}))
    rows.append({"question_id": 10, "image": [str(images[0]), "missing.png"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _batch_runner_matches(vm: Any, folder: Path, images: list[Path], tmp_path: Path) -> None:
    """``libra batch --engine vllm`` machinery: same answers file as --engine hf, errors file, resume."""
    from libra_cli import batch as b
    from libra_cli.checkpoint.load import load_model
    from libra_cli.engines.vllm import VllmEngine
    from libra_cli.generation import GenerationSettings

    q = tmp_path / "q.jsonl"
    _questions(images, q)
    settings = GenerationSettings(max_new_tokens=MAX_NEW)
    items, errors = b.read_input(str(q), cols=b.Columns())
    hf_out, v_out = tmp_path / "hf.jsonl", tmp_path / "vllm.jsonl"
    lm = load_model(str(folder), device="cpu", dtype="float32")
    b.run_batch(b.BatchRunner(lm, settings, batch_size=4), items, errors, hf_out)
    # first a partial run (3 studies), then the rest resumes; window 2 keeps the engine refilling
    calls: list[int] = []
    part = b.BatchRunner(VllmEngine(vm), settings, batch_size=2, on_batch=lambda n, t: calls.append(n))
    b.run_batch(part, items[:3], [], v_out)
    stats = b.run_batch(b.BatchRunner(VllmEngine(vm), settings, batch_size=2), items, errors, v_out)
    assert stats.resumed == 3 and stats.answered == len(items) - 4 and stats.failed == 1
    assert sum(calls) == 3
    hf_rows = [json.loads(line) for line in hf_out.read_text().splitlines()]
    v_rows = [json.loads(line) for line in v_out.read_text().splitlines()]
    assert [r["question_id"] for r in v_rows] == [r["question_id"] for r in hf_rows]
    assert [r["text"] for r in v_rows] == [r["text"] for r in hf_rows]
    assert all(r["metadata"]["engine"] == "vllm" for r in v_rows)
    err = [json.loads(line) for line in b.errors_path(v_out).read_text().splitlines()]
    assert [(e["question_id"], e["stage"]) for e in err] == [(10, "image")]


def _answers(runner: Any, q: Path, out: Path) -> list[str]:
    from libra_cli import batch as b

    items, errors = b.read_input(str(q), cols=b.Columns())
    b.run_batch(runner, items, errors, out, overwrite=True)
    return [json.loads(line)["text"] for line in out.read_text().splitlines()]


def test_beams_equal_transformers_with_and_without_the_ngram_ban(tiny: dict[str, Any], tmp_path: Path) -> None:
    """Beam search (3 beams, length penalty 2) on --engine vllm equals --engine hf, with the paper's 3-gram ban too.

    libra drives transformers' beam algorithm on vLLM (libra_cli/vllm_engine/beams.py); vLLM's own
    beam search (no n-gram ban) is used only with sampling, a repetition penalty or a stop string.
    """
    from libra_cli.engines.vllm import load_vllm_model
    from libra_cli.vllm_engine.options import VllmOptions

    folder = tiny["models"]["tac"]
    vm = load_vllm_model(str(folder), dtype="float32", options=VllmOptions(enforce_eager=True))
    try:
        _beams(vm, folder, tiny["images"], tmp_path)
    finally:
        vm.close()


def _beams(vm: Any, folder: Path, images: list[Path], tmp_path: Path) -> None:
    from libra_cli import batch as b
    from libra_cli.checkpoint.load import load_model
    from libra_cli.engines.vllm import VllmEngine
    from libra_cli.generation import GenerationSettings

    q = tmp_path / "qb.jsonl"
    _questions(images, q)
    lm = load_model(str(folder), device="cpu", dtype="float32")
    texts = {}
    for name, ngram in (("plain", 0), ("paper", None)):
        st = GenerationSettings(max_new_tokens=MAX_NEW, num_beams=3, length_penalty=2.0, no_repeat_ngram_size=ngram,
                                num_return_sequences=2)
        hf_out, v_out = tmp_path / f"hf-{name}.jsonl", tmp_path / f"v-{name}.jsonl"
        hf = _answers(b.BatchRunner(lm, st, batch_size=4), q, hf_out)
        v = _answers(b.BatchRunner(VllmEngine(vm), st, batch_size=4), q, v_out)
        assert v == hf, name
        hf_c = [json.loads(x)["metadata"]["candidates"] for x in hf_out.read_text().splitlines()]
        v_c = [json.loads(x)["metadata"]["candidates"] for x in v_out.read_text().splitlines()]
        assert [[c["text"] for c in r] for r in v_c] == [[c["text"] for c in r] for r in hf_c], name  # 2nd beam too
        assert [c["score"] for r in v_c for c in r] == pytest.approx([c["score"] for r in hf_c for c in r],
                                                                     abs=1e-3)  # transformers' normalisation
        texts[name] = v
    assert texts["paper"] != texts["plain"]  # the ban changed something: the test sees it


def _eos_prone_copy(folder: Path, dst: Path, lm: Any, images: list[Path]) -> int:
    """A copy whose EOS row is 0.98 x the row of the token greedy decoding writes most: beams end early."""
    from collections import Counter

    from safetensors.torch import load_file, save_file

    from libra_cli.generation import GenerationSettings, Sample, generate

    reps = generate(lm, [Sample(images[i], images[i + 1]) for i in range(0, 8, 2)], GenerationSettings(max_new_tokens=MAX_NEW))
    frequent = Counter(t for r in reps for t in r.token_ids).most_common(1)[0][0]
    shutil.copytree(folder, dst)
    state = load_file(str(dst / "model.safetensors"))
    eos = lm.tokenizer.eos_token_id
    state["lm_head.weight"][eos] = 0.98 * state["lm_head.weight"][frequent]
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return eos


def test_beams_that_end_early_equal_transformers(tiny: dict[str, Any], tmp_path: Path) -> None:
    """Beams ending on EOS before the last step: transformers' length normalisation and stopping rule, on vLLM."""
    from libra_cli import batch as b
    from libra_cli.checkpoint.load import load_model
    from libra_cli.engines.vllm import VllmEngine, load_vllm_model
    from libra_cli.generation import GenerationSettings, Sample, generate
    from libra_cli.vllm_engine.options import VllmOptions

    images = tiny["images"]
    base = load_model(str(tiny["models"]["tac"]), device="cpu", dtype="float32")
    folder = tiny["models"]["tac"].parent / "eos-prone"  # beside the tac model: its tower path is ../tiny-rad-dino
    eos = _eos_prone_copy(tiny["models"]["tac"], folder, base, images)
    lm = load_model(str(folder), device="cpu", dtype="float32")
    # length penalty 0.5 lets short beams win (with 2.0 the longest always does); the 3-gram ban is on
    st = GenerationSettings(max_new_tokens=MAX_NEW, num_beams=3, length_penalty=0.5, num_return_sequences=2)
    reps = generate(lm, [Sample(images[i], images[i + 1] if i % 4 == 0 else None) for i in range(0, 20, 2)], st)
    ended = [c.token_ids for r in reps for c in r.candidates if c.token_ids[-1] == eos and len(c.token_ids) < MAX_NEW]
    assert ended  # the test exercises early ends
    q = tmp_path / "q.jsonl"
    _questions(images, q)
    vm = load_vllm_model(str(folder), dtype="float32", options=VllmOptions(enforce_eager=True))
    try:
        engine = VllmEngine(vm)
        assert engine.session(st, 4, 64, 10).exact_beams  # transformers' algorithm, not vLLM's own beam search
        v = _answers(b.BatchRunner(engine, st, batch_size=4), q, tmp_path / "v.jsonl")
    finally:
        vm.close()
    hf = _answers(b.BatchRunner(lm, st, batch_size=4), q, tmp_path / "hf.jsonl")
    assert v == hf
    cands = [[[c["text"] for c in json.loads(x)["metadata"]["candidates"]] for x in (tmp_path / f).read_text().splitlines()]
             for f in ("v.jsonl", "hf.jsonl")]
    assert cands[0] == cands[1]


def test_incremental_detokenization_equals_libra_decode(tiny: dict[str, Any]) -> None:
    """vLLM's streaming detokenizer over LibraTokenizer gives libra's decode (byte fallback, spaces)."""
    from vllm.tokenizers.detokenizer_utils import convert_prompt_ids_to_tokens, detokenize_incrementally

    from libra_cli.vllm_engine.tokenizer import LibraTokenizer

    tok = LibraTokenizer.from_pretrained(str(tiny["models"]["tac"]))
    rng = random.Random(0)
    prompt = tok.encode_study("A chat. USER: <image>\nDescribe. ASSISTANT:")
    mismatches = []
    for trial in range(300):
        ids = [rng.randrange(3, tok.placeholder_id) for _ in range(rng.randrange(1, 30))]
        tokens, prefix, read = convert_prompt_ids_to_tokens(tok, prompt, skip_special_tokens=True)
        text, seen = "", list(prompt)
        for t in ids:
            seen.append(t)
            new, piece, prefix, read = detokenize_incrementally(tok, seen, tokens, prefix, read,
                                                                skip_special_tokens=True)
            tokens += new
            text += piece
        expected = tok.decode(ids)
        if text.strip() != expected.strip():
            mismatches.append((trial, ids, text, expected))
    # the only difference vLLM's streaming can make: an unfinished UTF-8 byte sequence at the very end
    # is held back (it never emits a trailing U+FFFD); everything else is identical
    for _, _, text, expected in mismatches:
        assert expected.rstrip().endswith("\ufffd") and expected.strip().startswith(text.strip())
