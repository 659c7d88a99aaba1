"""The tiny recipe end to end on CPU: stage 1 -> stage 2 -> load_model(--model-base); resume == uninterrupted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
QUERIES = ["Provide a detailed description of the findings in the radiology image.", "Describe the findings.",
           "What changed since the prior study?"]
ANSWERS = ["The heart size is normal. No effusion.", "Stable cardiomegaly. Lungs are clear.",
           "Interval improvement of the left effusion.", "No acute change compared with prior."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """Base model (tower ../tiny-rad-dino), small copies of the two X-rays, a varied training JSON."""
    from PIL import Image

    from tests.builders.tiny import make_tiny_libra

    root = tmp_path_factory.mktemp("train")
    shutil.copytree(SHARED / "fixtures" / "tiny-rad-dino", root / "tiny-rad-dino")
    make_tiny_libra(root / "base", SHARED / "fixtures" / "tokenizer")
    (root / "images").mkdir()
    for name in ("current.jpg", "prior.jpg"):
        im = Image.open(SHARED / "data" / "cxr" / name)
        im.thumbnail((160, 160))  # the encoder sees 70x70: keep JPEG decoding cheap
        im.save(root / "images" / name)
    records = [{"id": f"s{i}", "image": ["current.jpg", "prior.jpg"] if i % 3 else ["current.jpg"],
                "conversations": [{"from": "human", "value": "<image>\n" + QUERIES[i % 3]},
                                  {"from": "gpt", "value": ANSWERS[i % 4]}]} for i in range(8)]
    (root / "train.json").write_text(json.dumps(records))
    (root / "valid.json").write_text(json.dumps(records[:2]))
    return root


def _common(root: Path) -> list[str]:
    return ["--set", f"model_name_or_path={root / 'base'}", "--set", f"data_path={root / 'train.json'}",
            "--set", f"image_folder={root / 'images'}", "--set", "max_steps=4", "--set", "save_steps=2"]


def _cli(*args: str) -> None:
    from libra_cli.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", *args])
    assert exc.value.code in (0, None)


def _losses(folder: Path) -> list[float]:
    state = json.loads((folder / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


@pytest.fixture(scope="module")
def stage1(tiny) -> Path:
    out = tiny / "s1"
    _cli("align", "--recipe", "tiny-cpu", *_common(tiny), "-o", str(out))
    return out


@pytest.fixture(scope="module")
def stage2(tiny, stage1) -> Path:
    out = tiny / "s2"
    _cli("finetune", "--recipe", "tiny-cpu", *_common(tiny), "-o", str(out),
         "--set", f"pretrain_mm_mlp_adapter={stage1}", "--set", f"eval_data_path={tiny / 'valid.json'}",
         "--set", "eval_steps=4", "--set", "eval_subset=2", "--set", "eval_max_new_tokens=4")
    return out


def test_stage1_connector_only(tiny, stage1):
    losses = _losses(stage1)
    assert len(losses) == 4 and losses[-1] < losses[0]
    for folder in (stage1, stage1 / "checkpoint-2", stage1 / "checkpoint-4"):
        sd = torch.load(folder / "mm_projector.bin", weights_only=True)
        assert sd and all(k.startswith("model.mm_projector.") for k in sd)
        assert (folder / "config.json").is_file() and (folder / "recipe.yaml").is_file()
    from libra_cli.checkpoint.layout import read_tensors

    base = read_tensors(tiny / "base", "model.mm_projector.")
    trained = torch.load(stage1 / "mm_projector.bin", weights_only=True)
    assert set(base) == set(trained) and any(not torch.equal(base[k], trained[k]) for k in base)
    # the LLM stayed frozen: a projector-only folder loads on top of the base
    from libra_cli.checkpoint import load_model

    loaded = load_model(str(stage1), model_base=str(tiny / "base"), device="cpu")
    assert loaded.kind == "projector"


def test_stage2_lora_layout_loads_with_model_base(tiny, stage1, stage2):
    losses = _losses(stage2)
    assert len(losses) == 4 and losses[-1] < losses[0]
    for folder in (stage2, stage2 / "checkpoint-4"):
        for name in ("adapter_config.json", "adapter_model.safetensors", "non_lora_trainables.bin", "config.json",
                     "recipe.yaml"):
            assert (folder / name).is_file(), name
    nlt = torch.load(stage2 / "non_lora_trainables.bin", weights_only=True)
    assert nlt and all(k.startswith("base_model.model.") for k in nlt)
    cfg = json.loads((stage2 / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16
    # validation ran real generation scored with libra_cli.metrics, and best/ was kept
    state = json.loads((stage2 / "trainer_state.json").read_text())
    assert any("eval_BLEU4" in h for h in state["log_history"]) and any("eval_loss" in h for h in state["log_history"])
    assert (stage2 / "best" / "adapter_config.json").is_file()

    from libra_cli.checkpoint import load_model
    from libra_cli.generation import GenerationSettings, generate_report

    loaded = load_model(str(stage2), model_base=str(tiny / "base"), device="cpu")
    assert loaded.kind == "lora"
    proj = torch.load(stage1 / "mm_projector.bin", weights_only=True)  # connector frozen at the stage-1 weights
    own = loaded.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in proj.items())
    base = load_model(str(tiny / "base"), device="cpu").model.state_dict()
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(own[key], base[key])  # LoRA merged into the text model
    assert torch.equal(own["lm_head.weight"], base["lm_head.weight"])
    report = generate_report(loaded, str(tiny / "images" / "current.jpg"), None,
                             settings=GenerationSettings(max_new_tokens=4))
    assert isinstance(report.text, str)
    # and `libra convert` turns it into a standalone checkpoint (verified against the LoRA + base logits)
    from libra_cli.convert import convert

    convert(str(stage2), tiny / "converted", model_base=str(tiny / "base"), device="cpu")
    assert (tiny / "converted" / "model.safetensors").is_file()


def test_resume_equals_uninterrupted(tiny, stage1, stage2):
    """Stop after checkpoint-2 (copy it alone), resume: the losses equal the uninterrupted run's."""
    out = tiny / "s2-resumed"
    out.mkdir()
    shutil.copytree(stage2 / "checkpoint-2", out / "checkpoint-2")
    _cli("finetune", "--recipe", "tiny-cpu", *_common(tiny), "-o", str(out), "--resume",
         "--set", f"pretrain_mm_mlp_adapter={stage1}", "--set", f"eval_data_path={tiny / 'valid.json'}",
         "--set", "eval_steps=4", "--set", "eval_subset=2", "--set", "eval_max_new_tokens=4")
    assert _losses(out) == pytest.approx(_losses(stage2), rel=1e-6, abs=1e-7)
    a = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    from safetensors.torch import load_file

    x, y = load_file(str(out / "adapter_model.safetensors")), load_file(str(stage2 / "adapter_model.safetensors"))
    assert set(x) == set(y) and all(torch.allclose(x[k], y[k], atol=1e-6) for k in x) and a


def test_plain_llm_base_gets_a_fresh_connector(tiny, tmp_path):
    """A plain Llama folder + vision_tower: a Libra model with a new TAC, only the connector trainable."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from libra_cli.training.model import build_model
    from libra_cli.training.recipe import load_recipe
    from tests.builders.tiny import copy_tokenizer

    cfg = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llm")
    copy_tokenizer(SHARED / "fixtures" / "tokenizer", tmp_path / "llm")
    recipe = load_recipe("tiny-cpu", "align", {"model_name_or_path": str(tmp_path / "llm"), "data_path": "x",
                                                "output_dir": "o", "vision_tower": str(tiny / "tiny-rad-dino")})
    built = build_model(recipe, "align")
    assert built.config.model_type == "libra" and built.config.mm_hidden_size == 32
    trainable = {n for n, p in built.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.mm_projector.") for n in trainable)
    assert built.info["num_image_tokens"] == 25


def test_connector_on_its_own_learning_rate(tiny, tmp_path):
    """freeze_mm_mlp_adapter: false + mm_projector_lr: the connector trains in its own optimizer groups."""
    from transformers import TrainingArguments

    from libra_cli.training.recipe import load_recipe
    from libra_cli.training.trainer import LibraTrainer, build_model

    recipe = load_recipe("tiny-cpu", "finetune", {"model_name_or_path": str(tiny / "base"), "data_path": "x",
                                                   "output_dir": str(tmp_path), "freeze_mm_mlp_adapter": "false",
                                                   "mm_projector_lr": "1e-5"})
    built = build_model(recipe, "finetune")
    names = {n for n, p in built.model.named_parameters() if p.requires_grad}
    assert any("mm_projector" in n for n in names) and any("lora_" in n for n in names)
    assert not any("vision_tower" in n or n.endswith("lm_head.weight") for n in names)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], learning_rate=2e-3)
    trainer = LibraTrainer(model=built.model, args=args, recipe=recipe, stage="finetune", built=built)
    groups = trainer.create_optimizer().param_groups
    conn = {id(p) for n, p in built.model.named_parameters() if "mm_projector" in n and p.requires_grad}
    for g in groups:
        ids = {id(p) for p in g["params"]}
        assert ids <= conn or not ids & conn
        assert g["lr"] == (1e-5 if ids <= conn else 2e-3)
    assert sum(len(g["params"]) for g in groups) == len(names)


def test_outputs_round_trip_like_their_base(tiny, stage1, stage2):
    """Every trained folder carries the base's tokenizer files (tokenizer.model: the original-exact codec) and a
    config.json that transformers 4.x (the original code) reads the same way as 5 (rope_theta, torch_dtype)."""
    from libra_cli.checkpoint import load_model
    from libra_cli.generation import Sample, prompt_ids

    base = load_model(str(tiny / "base"), device="cpu")
    for folder in (stage1, stage1 / "checkpoint-4", stage2, stage2 / "checkpoint-4", tiny / "converted"):
        for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
            assert (folder / name).read_bytes() == (tiny / "base" / name).read_bytes(), (folder, name)
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"] and cfg["torch_dtype"] == "float32"
        assert "rope_scaling" in cfg
    lora = load_model(str(stage2), model_base=str(tiny / "base"), device="cpu")
    text = "Compare  with the prior:  two  spaces"  # runs of spaces: where the fast tokenizer differs
    sample = Sample("x.jpg", query=text)
    assert prompt_ids(lora, sample)[1] == prompt_ids(base, Sample("x.jpg", query=text))[1]
    ids = base.encode("The heart size is normal. \u00e9\u00e8 ok")
    assert lora.codec is not None and lora.decode(ids) == base.decode(ids)


def test_train_refuses_an_earlier_run_without_resume_or_force(tiny, stage1, capsys):
    from libra_cli.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "align", "--recipe", "tiny-cpu", *_common(tiny), "-o", str(stage1)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "holds an earlier run" in err and "--resume" in err and "--force" in err


def test_killed_while_writing_a_checkpoint_resumes_from_the_last_complete_one(tiny, monkeypatch):
    """A kill during the checkpoint-4 write leaves only a hidden staging folder; --resume starts from checkpoint-2
    and the run finishes with the output path alone on stdout (logs and progress go to stderr)."""
    import subprocess
    import sys

    from libra_cli.training import outputs as tr

    out = tiny / "killed"
    real = tr.publish_checkpoint

    def killed_at_4(staging, run_dir, step, state):  # noqa: ANN001, ANN202
        if step == 4:
            raise KeyboardInterrupt  # the process dies before the rename
        return real(staging, run_dir, step, state)

    monkeypatch.setattr(tr, "publish_checkpoint", killed_at_4)
    from libra_cli.cli import main

    with pytest.raises(SystemExit):
        main(["train", "align", "--recipe", "tiny-cpu", *_common(tiny), "-o", str(out)])
    assert (out / "checkpoint-2" / "trainer_state.json").is_file() and not (out / "checkpoint-4").exists()
    assert list(out.glob(".staging-checkpoint-4"))
    assert tr.resolve_resume(True, str(out)) == str(out / "checkpoint-2")
    res = subprocess.run([sys.executable, "-m", "libra_cli", "train", "align", "--recipe", "tiny-cpu", *_common(tiny),
                          "-o", str(out), "--resume"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [str(out)]
    assert "loss" in res.stderr
    assert (out / "checkpoint-4" / "trainer_state.json").is_file() and not list(out.glob(".staging-*"))


NOTICES = ("kernels-community", "publisher trust", "Could not find a config file", "UserWarning", "FutureWarning")


def test_cpu_training_is_quiet_by_default_and_verbose_on_request(tiny):
    """A LoRA run on the demo base prints its progress and summary only: no third-party notices that ask nothing
    of the user (bitsandbytes' hub kernel, kernels' trust check, peft's config guess), no empty step line."""
    import subprocess
    import sys

    args = ["train", "finetune", "--recipe", "tiny-cpu", "--set", "model_name_or_path=demo",
            "--set", f"data_path={tiny / 'train.json'}", "--set", f"image_folder={tiny / 'images'}",
            "--set", "max_steps=1", "--set", "save_steps=1"]
    res = subprocess.run([sys.executable, "-m", "libra_cli", *args, "-o", str(tiny / "quiet")], capture_output=True,
                         text=True, timeout=900, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr
    assert not [n for n in NOTICES if n in res.stderr], res.stderr
    assert all(line.split(":", 1)[1].strip() for line in res.stderr.splitlines() if line.startswith("step ")), res.stderr
    assert "done: 1 steps" in res.stderr
    # the filter hides a real notice: --verbose shows it (peft's, raised on every CPU)
    res = subprocess.run([sys.executable, "-m", "libra_cli", "--verbose", *args, "-o", str(tiny / "verbose")],
                         capture_output=True, text=True, timeout=900, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0 and "Could not find a config file" in res.stderr, res.stderr
