"""Training recipes, data checks, label masking (token by token) and collation: no model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from libra_cli.errors import InputError
from libra_cli.prompts import IMAGE_TOKEN_INDEX
from libra_cli.training.data import (
    IGNORE_INDEX,
    LibraCollator,
    build_example,
    conversation_text,
    read_records,
)
from libra_cli.training.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tokenizer"
REQ = {"model_name_or_path": "m", "data_path": "d.json", "output_dir": "o"}


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER)


# ------------------------------------------------------------------ recipes
def test_recipe_stage_sections_and_overrides():
    a = load_recipe("tiny-cpu", "align", REQ)
    f = load_recipe(REPO / "recipes" / "tiny-cpu.yaml", "finetune", {**REQ, "lora_r": "4", "eval_steps": "none"})
    assert a.learning_rate == 1e-3 and f.learning_rate == 2e-3
    assert f.lora_r == 4 and f.eval_steps is None and f.lora_alpha == 16
    assert a.gradient_accumulation(1) == 2 and a.gradient_accumulation(2) == 1


@pytest.mark.parametrize("name", ["libra7b", "libra3b"])
def test_published_recipes(name):
    a = load_recipe(name, "align")
    f = load_recipe(name, "finetune")
    assert (a.global_batch_size, a.learning_rate, a.num_train_epochs, a.model_max_length) == (16, 2e-5, 1, 2048)
    assert (a.weight_decay, a.warmup_ratio, a.lr_scheduler_type) == (0.0, 0.03, "cosine")
    assert (f.lora_r, f.lora_alpha, f.learning_rate, f.num_train_epochs, f.freeze_mm_mlp_adapter) == (128, 256, 2e-5, 3, True)
    assert a.conv_mode == ("libra_v1" if name == "libra7b" else "libra_llama_3")


@pytest.mark.parametrize("override, message", [
    ({"learnin_rate": "1"}, "did you mean 'learning_rate'"),
    ({"lora_r": "abc"}, "lora_r must be int"),
    ({"padding_side": "middle"}, "padding_side must be left or right"),
    ({"global_batch_size": "5"}, "not a multiple"),
])
def test_recipe_errors(override, message):
    with pytest.raises(InputError, match=message):
        load_recipe("tiny-cpu", "align", {**REQ, **override})


def test_unknown_key_in_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model_name_or_path: m\nfinetune:\n  lora_alpfa: 3\n")
    with pytest.raises(InputError, match="lora_alpfa.*did you mean 'lora_alpha'"):
        load_recipe(p, "finetune", REQ)


# ------------------------------------------------------------------ label masking, token by token
def test_masking_token_by_token(tok):
    """Hand-built: libra_v1, two rounds. Labelled: the answer tokens and the </s> closing each answer."""
    turns = [{"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "No change."},
             {"from": "human", "value": "Why?"}, {"from": "gpt", "value": "Stable."}]
    text, _ = conversation_text(turns, "libra_v1")
    system = ("The assistant specialized in comparing Chest X-ray images, identifying differences, "
              "and noting temporal changes.")
    assert text == f"{system} USER: <image>\nDescribe it. ASSISTANT: No change.</s>USER: Why? ASSISTANT: Stable.</s>"
    ids, labels = build_example(turns, tok, "libra_v1")
    pieces = [tok.convert_ids_to_tokens(i) if i >= 0 else "<IMG>" for i in ids]
    # prompt part: BOS + system (44 tokens) + " USER:" ... "ASSISTANT:" all masked
    head = pieces.index("<IMG>")
    assert pieces[0] == "<s>" and ids[head] == IMAGE_TOKEN_INDEX
    tail = pieces[head:]
    expected = [
        ("<IMG>", False), ("▁", False), ("<0x0A>", False), ("D", False), ("es", False), ("cri", False),
        ("be", False), ("▁i", False), ("t", False), (".", False), ("▁ASSISTANT", False), (":", False),
        ("▁No", True), ("▁change", True), (".", True), ("</s>", True),
        ("U", False), ("SER", False), (":", False), ("▁", False), ("W", False), ("h", False), ("y", False),
        ("?", False), ("▁ASSISTANT", False), (":", False),
        ("▁S", True), ("ta", True), ("ble", True), (".", True), ("</s>", True),
    ]
    assert [(p, lab != IGNORE_INDEX) for p, lab in zip(tail, labels[head:], strict=True)] == expected
    assert all(lab == IGNORE_INDEX for lab in labels[:head])
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(ids, labels, strict=True))
    from libra_cli.prompts import tokenize_with_image

    assert ids == tokenize_with_image(text, tok)  # same ids as inference tokenisation


def test_image_marker_moved_to_front(tok):
    a, _ = conversation_text([{"from": "human", "value": "Describe.\n<image>"}, {"from": "gpt", "value": "x"}], "libra_v1")
    b, _ = conversation_text([{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "x"}], "libra_v1")
    assert a == b


def test_masking_llama3_template(tok):
    turns = [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "Normal heart."}]
    text, spans = conversation_text(turns, "libra_llama_3")
    assert [text[s:e] for s, e in spans] == ["Normal heart.<|eot_id|>"]


# ------------------------------------------------------------------ collation
@pytest.mark.parametrize("side", ["left", "right"])
def test_collator_padding_and_expansion(side):
    items = [
        {"input_ids": [1, IMAGE_TOKEN_INDEX, 5, 6], "labels": [-100, -100, 5, 6], "pixel_values": torch.zeros(2, 3, 4, 4)},
        {"input_ids": [1, IMAGE_TOKEN_INDEX, 7], "labels": [-100, -100, 7], "pixel_values": torch.ones(2, 3, 4, 4)},
    ]
    b = LibraCollator(pad_token_id=0, num_image_tokens=3, padding_side=side)(items)
    assert b["input_ids"].shape == (2, 6) and b["pixel_values"].shape == (2, 2, 3, 4, 4)
    assert b["input_ids"][0].tolist() == [1, -200, -200, -200, 5, 6]
    assert b["labels"][0].tolist() == [-100, -100, -100, -100, 5, 6]
    row = [1, -200, -200, -200, 7]
    if side == "right":
        assert b["input_ids"][1].tolist() == [*row, 0] and b["attention_mask"][1].tolist() == [1] * 5 + [0]
        assert b["labels"][1].tolist() == [-100] * 4 + [7, -100]
    else:
        assert b["input_ids"][1].tolist() == [0, *row] and b["attention_mask"][1].tolist() == [0] + [1] * 5
        assert b["labels"][1].tolist() == [-100] * 5 + [7]


# ------------------------------------------------------------------ data file checks
def _write(tmp_path, data, name="d.json"):
    (tmp_path / "a.jpg").write_bytes(b"x")
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


GOOD = {"id": "1", "image": ["a.jpg"], "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}


@pytest.mark.parametrize("data, message", [
    ("[{", "not valid JSON"),
    ([], "non-empty list"),
    ([{**GOOD, "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}], "alternate"),
    ([{**GOOD, "image": ["missing.jpg"]}], "missing.jpg not found"),
    ([{k: v for k, v in GOOD.items() if k != "image"}], "no 'image'"),
])
def test_bad_data(tmp_path, data, message):
    with pytest.raises(InputError, match=message):
        read_records(_write(tmp_path, data), tmp_path)


def test_good_data(tmp_path):
    assert read_records(_write(tmp_path, [GOOD]), tmp_path)[0]["id"] == "1"


def _cli(capsys, *args):
    from libra_cli.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", *args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_cli_bad_recipe_and_data_one_line(tmp_path, capsys):
    """One-line error, exit 2, before any model is loaded (the model path does not even exist)."""
    bad = _write(tmp_path, [{**GOOD, "image": ["nope.jpg"]}])
    cases = [
        (["--recipe", "tiny-cpu", "--set", "lora_rr=3"], "did you mean 'lora_r'"),
        (["--recipe", "tiny-cpu", "--set", f"data_path={bad}", "--set", f"image_folder={tmp_path}",
          "--set", "model_name_or_path=/nonexistent", "-o", str(tmp_path / "o")], "nope.jpg not found"),
        (["--recipe", str(tmp_path / "missing.yaml")], "not found"),
    ]
    for stage in ("align", "finetune"):
        for args, message in cases:
            code, _, err = _cli(capsys, stage, *args)
            assert code == 2, err
            assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


def test_cli_dry_run(tmp_path, capsys):
    good = _write(tmp_path, [GOOD])
    code, out, err = _cli(capsys, "align", "--recipe", "tiny-cpu", "--dry-run", "--set", f"data_path={good}",
                          "--set", f"image_folder={tmp_path}", "--set", "model_name_or_path=m", "-o", str(tmp_path / "o"))
    assert code in (0, None), err
    assert "learning_rate: 0.001" in out and "stage: align" in out


def test_dataset_truncation_and_dummy_prior(tmp_path, tok):
    from PIL import Image

    from libra_cli.images import ImageProcessorConfig
    from libra_cli.training.data import LibraTrainDataset

    Image.new("RGB", (40, 30), (120, 120, 120)).save(tmp_path / "c.jpg")
    Image.new("RGB", (40, 30), (10, 10, 10)).save(tmp_path / "p.jpg")
    long = "The heart is normal. " * 40
    recs = [{"id": "a", "image": ["c.jpg"], "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "ok"}]},
            {"id": "b", "image": ["c.jpg", "p.jpg"], "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": long}]}]
    proc = ImageProcessorConfig.from_pretrained(TOKENIZER.parent / "tiny-rad-dino")
    ds = LibraTrainDataset(recs, tmp_path, tok, proc, "libra_v1", num_image_tokens=25, model_max_length=128)
    a, b = ds[0], ds[1]
    assert torch.equal(a["pixel_values"][0], a["pixel_values"][1]) and a["prior_is_dummy"]
    assert not torch.equal(b["pixel_values"][0], b["pixel_values"][1]) and not b["prior_is_dummy"]
    assert len(b["input_ids"]) + 24 == 128 and ds.truncated == {1}
    assert len(ds.lengths) == 2 and ds.lengths[1] > ds.lengths[0]
    tiny = LibraTrainDataset(recs, tmp_path, tok, proc, "libra_v1", num_image_tokens=25, model_max_length=30)
    with pytest.raises(InputError, match="no room"):
        tiny[1]


def test_training_prompt_ids_equal_inference_ids(tok) -> None:
    """Training and inference join the image chunks with one function; the prompt ids must agree."""
    from libra_cli.checkpoint.tokenizer import SpmCodec
    from libra_cli.prompts import build_prompt, tokenize_with_image

    codec = SpmCodec.for_folder(str(TOKENIZER), tok)
    question = "Describe  the  findings."
    turns = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": "Heart  size is  normal."}]
    ids, labels = build_example(turns, tok, "libra_v1")
    prompt, _ = build_prompt(question, "libra_v1")
    prompt_ids = tokenize_with_image(prompt, tok, encode=codec.encode)
    assert ids[: len(prompt_ids)] == prompt_ids
    answer = [t for t, lab in zip(ids, labels, strict=True) if lab != -100]
    assert answer == codec.encode("Heart  size is  normal.")[1:] + [tok.eos_token_id]


def test_report_to_takes_any_trainer_logger_and_checks_its_package() -> None:
    from libra_cli.errors import InputError
    from libra_cli.training.recipe import load_recipe

    base = {"model_name_or_path": "m", "data_path": "d", "output_dir": "o"}
    assert load_recipe(None, "align", base | {"report_to": "tensorboard"}).loggers() == ["tensorboard"]
    assert load_recipe(None, "align", base | {"report_to": "none"}).loggers() == []
    with pytest.raises(InputError, match="did you mean 'tensorboard'"):
        load_recipe(None, "align", base | {"report_to": "tensorbord"})
    with pytest.raises(InputError, match=r"trackio needs the trackio package \(pip install trackio\)"):
        load_recipe(None, "align", base | {"report_to": "tensorboard,trackio"})
