"""``libra batch``: batch invariance (fixture + tiny random models), resume, errors, shards, OOM back-off."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from libra_cli import batch as b
from libra_cli.generation import GenerationSettings, Sample, generate
from tests.conftest import CXR, FIXTURES


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Small distinct PNGs cut from the two real X-rays (fast to decode, non-square)."""
    d = tmp_path_factory.mktemp("img")
    out = {}
    for name, src, box, rot in [("a", "current", (0, 0, 900, 700), 0), ("b", "prior", (100, 50, 800, 800), 0),
                                ("c", "current", (200, 300, 900, 900), 90), ("d", "prior", (0, 0, 600, 700), 180)]:
        img = Image.open(CXR / f"{src}.jpg").convert("L").crop(box).rotate(rot, expand=True)
        img.thumbnail((160, 160))
        img.save(d / f"{name}.png")
        out[name] = str(d / f"{name}.png")
    return out


@pytest.fixture(scope="module")
def fixture_model():
    from libra_cli.checkpoint import load_model

    return load_model(str(FIXTURES / "tiny-libra-tac"), device="cpu")


@pytest.fixture(scope="module")
def tiny_qwen_mlp(tmp_path_factory: pytest.TempPathFactory):
    """A random Qwen2 + mlp2x_gelu model (no prior, other backbone and connector)."""
    from libra_cli.checkpoint import load_model
    from tests.builders.tiny import make_tiny_libra

    root = tmp_path_factory.mktemp("tiny")
    shutil.copytree(FIXTURES / "tiny-rad-dino", root / "tiny-rad-dino")
    make_tiny_libra(root / "m", FIXTURES / "tokenizer", backbone="libra_qwen2", connector="mlp2x_gelu", seed=3)
    return load_model(str(root / "m"), device="cpu")


def _items(images: dict[str, str]) -> list[b.Item]:
    ref = lambda k: b.ImageRef("file:" + images[k], images[k])  # noqa: E731
    return [
        b.Item(0, "q0", ref("a"), ref("b"), None),  # default query
        b.Item(1, "q1", ref("b"), None, "Describe."),  # dummy prior, short prompt
        b.Item(2, "q2", ref("c"), ref("a"), "What changed in the heart size compared with the prior study, in detail?"),
        b.Item(3, "q3", ref("a"), ref("b"), "Findings?", context="Indication: cough and fever for three days."),
        b.Item(4, "q4", ref("d"), None, None),  # shares nothing
        b.Item(5, "q5", ref("b"), ref("c"), "Any new opacity?"),  # b: a prior that is also a current
    ]


def _alone(loaded, it: b.Item, settings: GenerationSettings, pix: dict):
    """``libra infer`` for one sample (images preprocessed once per test: same arrays as from the path)."""
    def px(ref):
        if ref.key not in pix:
            pix[ref.key] = b.decode_image(ref.source, loaded)
        return pix[ref.key]

    s = Sample(px(it.current), px(it.prior) if it.prior else None, it.query, it.context)
    return generate(loaded, [s], settings)[0]


SETTINGS = [
    GenerationSettings(max_new_tokens=10),
    GenerationSettings(max_new_tokens=10, num_beams=3, length_penalty=2.0, num_return_sequences=2),
]


@pytest.mark.parametrize("model_name", ["fixture_model", "tiny_qwen_mlp"])
@pytest.mark.parametrize("settings", SETTINGS, ids=["greedy", "beam3"])
def test_batched_answers_equal_alone(request, images, tmp_path, model_name, settings) -> None:
    loaded = request.getfixturevalue(model_name)
    items = _items(images)
    runner = b.BatchRunner(loaded, settings, batch_size=4, workers=2)
    stats = b.run_batch(runner, items, [], tmp_path / "a.jsonl")
    assert stats.answered == len(items) and stats.failed == 0
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in lines] == [it.question_id for it in items]  # input order
    pix: dict = {}
    for it, rec in zip(items, lines, strict=True):
        alone = _alone(loaded, it, settings, pix)
        assert rec["text"] == alone.text, it.question_id
        assert rec["metadata"]["prior_is_dummy"] == alone.prior_is_dummy
        if settings.num_return_sequences > 1:
            cands = rec["metadata"]["candidates"]
            assert [c["text"] for c in cands] == [c.text for c in alone.candidates]
            assert [c["score"] for c in cands] == pytest.approx([c.score for c in alone.candidates], abs=1e-5)
    if loaded.uses_prior:  # a, b and c are each used by several samples: encoded once
        assert stats.encoded_images == 4 and stats.cache_hits == 10 - 4
    else:
        assert stats.encoded_images == 4 and stats.cache_hits == 2


def test_shards_merge_to_the_single_run(fixture_model, images, tmp_path) -> None:
    items = _items(images)
    s = GenerationSettings(max_new_tokens=4)
    errs = [b.ErrorRecord(6, None, "input", "unreadable JSON line 7: x", "q.jsonl:7")]
    b.run_batch(b.BatchRunner(fixture_model, s, batch_size=3), items, errs, tmp_path / "one.jsonl")
    out = tmp_path / "sharded.jsonl"
    first = b.run_batch(b.BatchRunner(fixture_model, s, batch_size=2), items, errs, out, num_shards=2, shard=1)
    assert first.merged is False and not out.exists()
    second = b.run_batch(b.BatchRunner(fixture_model, s, batch_size=1), items, errs, out, num_shards=2, shard=0)
    assert second.merged is True
    assert out.read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert b.errors_path(out).read_bytes() == b.errors_path(tmp_path / "one.jsonl").read_bytes()
    assert not b.shard_path(out, 2, 0).exists() and not b.shard_path(out, 2, 1).exists()


@pytest.mark.parametrize("launched", [True, False])
def test_failed_shard_defers_exit_to_the_merge_under_torchrun(fixture_model, images, tmp_path, monkeypatch,
                                                                launched) -> None:
    """Under torchrun a rank exiting 1 gets its peers killed before they merge: only the merging rank fails."""
    for var in ("TORCHELASTIC_RUN_ID", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    if launched:
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    items = _items(images)
    s = GenerationSettings(max_new_tokens=2)
    errs = [b.ErrorRecord(6, None, "input", "unreadable JSON line 7: x", "q.jsonl:7")]  # 6 % 2: shard 0's
    out = tmp_path / "sharded.jsonl"
    first = b.run_batch(b.BatchRunner(fixture_model, s, batch_size=2), items, errs, out, num_shards=2, shard=0)
    assert first.failed == 1 and first.merged is False
    assert first.exit_failed is (not launched)  # by hand, a shard reports its own failures
    second = b.run_batch(b.BatchRunner(fixture_model, s, batch_size=2), items, errs, out, num_shards=2, shard=1)
    assert second.failed == 0 and second.merged is True
    assert second.failed_all_shards == 1 and second.exit_failed  # the merging rank reports every shard's
    assert len(b.errors_path(out).read_text().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sharded.jsonl", "sharded.jsonl.errors.jsonl"]


def test_resume_repairs_torn_tail_and_skips_done(fixture_model, images, tmp_path) -> None:
    items = _items(images)
    s = GenerationSettings(max_new_tokens=4)
    out = tmp_path / "a.jsonl"
    b.run_batch(b.BatchRunner(fixture_model, s, batch_size=6), items[:3], [], out)
    full = out.read_bytes()
    with open(out, "ab") as fh:  # what a kill -9 in the middle of a write could leave
        fh.write(b'{"question_id": "q3", "prompt": "Find')
    stats = b.run_batch(b.BatchRunner(fixture_model, s, batch_size=2), items, [], out)
    assert stats.resumed == 3 and stats.answered == 3
    lines = out.read_text().splitlines()
    ids = [json.loads(x)["question_id"] for x in lines]
    assert ids == [it.question_id for it in items]
    assert out.read_bytes().startswith(full)
    other = GenerationSettings(max_new_tokens=5)
    with pytest.raises(b.InputError, match="other settings"):
        b.run_batch(b.BatchRunner(fixture_model, other), items, [], out)


def test_bad_samples_go_to_errors_and_exit_code(fixture_model, images, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from libra_cli.cli import app

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    q = tmp_path / "q.jsonl"
    lines = [
        {"question_id": 1, "image": [images["a"], images["b"]], "text": "Describe."},
        {"question_id": 2, "image": [images["a"], "nope.png"], "text": "Describe."},
        {"question_id": 3, "image": str(bad), "text": "Describe."},
        {"question_id": 4, "image": images["c"], "text": "  "},
        "{broken",
        {"question_id": 1, "image": images["c"], "text": "again"},
        {"question_id": 6, "image": [images["c"]]},
    ]
    q.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    monkeypatch.setattr("libra_cli.commands.options.ModelFlags.load", lambda *a, **k: fixture_model)
    out = tmp_path / "ans.jsonl"
    res = CliRunner().invoke(app, ["batch", str(q), "--out", str(out), "--max-new-tokens", "3", "-b", "2", "-q"])
    assert res.exit_code == b.EXIT_SAMPLES_FAILED, res.output
    answers = [json.loads(x) for x in out.read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [1, 6]
    assert set(answers[0]) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    assert answers[1]["prompt"] == "Provide a detailed description of the findings in the radiology image."
    errs = [json.loads(x) for x in b.errors_path(out).read_text().splitlines()]
    assert [(e["question_id"], e["stage"]) for e in errs] == [
        (2, "image"), (3, "image"), (4, "input"), (None, "input"), (1, "input")]
    assert "nope.png" in errs[0]["reason"] and "line 5" in errs[3]["reason"] and "duplicate" in errs[4]["reason"]
    assert errs[3]["where"] == "q.jsonl:5"


def test_oom_backs_off(fixture_model, images, tmp_path, monkeypatch) -> None:
    from libra_cli.engines.hf import HfEngine

    real = HfEngine.generate

    class OutOfMemoryError(RuntimeError):
        pass

    def fake(engine, samples, settings, **kw):
        if len(samples) > 2:
            raise OutOfMemoryError("CUDA out of memory (simulated)")
        return real(engine, samples, settings, **kw)

    monkeypatch.setattr(HfEngine, "generate", fake)
    stats = b.run_batch(b.BatchRunner(fixture_model, GenerationSettings(max_new_tokens=2), batch_size=6),
                        _items(images), [], tmp_path / "a.jsonl")
    assert stats.answered == 6 and stats.batch_size <= 2


def test_auto_batch_size_estimate(fixture_model) -> None:
    per = b.per_sample_bytes(fixture_model.config, 120, 512, 10, 2)
    assert per > b.per_sample_bytes(fixture_model.config, 120, 512, 1, 2)
    assert b.pick_batch_size(10 * per, per, 1000) == 7
    assert b.pick_batch_size(per // 10, per, 1000) == 1
    assert b.pick_batch_size(10**15, per, 40) == 40
    assert b.auto_batch_size(fixture_model, GenerationSettings(), 100, 50) == 16  # CPU


def test_plan_keeps_shared_images_together(images) -> None:
    items = _items(images)
    lengths = {it.index: 10 for it in items}
    plan = b.plan_batches(items, lengths, 2)
    order = [it.question_id for batch in plan for it in batch]
    assert sorted(order) == sorted(it.question_id for it in items)
    lengths[2] = 30
    assert b.plan_batches(items, lengths, 2)[0][0].question_id == "q2"  # longest first
    assert order[-1] == "q4"  # the only sample sharing no image comes after the connected ones
