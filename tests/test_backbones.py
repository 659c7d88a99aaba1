"""Every backbone x connector loads from the original layout and generates; LoRA and projector-only
folders on a base equal a merge done by hand (issue 2)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from libra_cli.checkpoint import load_model
from libra_cli.generation import GenerationSettings, generate_report
from tests.builders.tiny import make_tiny_libra, make_vision_tower
from tests.conftest import CXR, FIXTURES

BACKBONES = ["libra", "libra_mistral", "libra_phi3", "libra_gemma", "libra_qwen2", "libra_qwen3"]
CONNECTORS = [("TAC", "dinov2", False), ("linear", "clip", False), ("mlp2x_gelu", "siglip", True)]


@pytest.fixture(scope="module")
def images():
    from libra_cli.images import load_image

    return load_image(CXR / "current.jpg"), load_image(CXR / "prior.jpg")


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("towers")
    shutil.copytree(FIXTURES / "tiny-rad-dino", root / "tiny-dinov2")
    make_vision_tower(root / "tiny-clip", "clip", layers=3)
    make_vision_tower(root / "tiny-siglip", "siglip", layers=3, image=56)
    return root


def _logits(lm, current, prior) -> torch.Tensor:
    from libra_cli.generation import Sample, prepare_batch

    b = prepare_batch(lm, [Sample(current, prior)])
    with torch.no_grad():
        return lm.model(input_ids=b.input_ids, attention_mask=b.attention_mask, pixel_values=b.pixel_values).logits


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("connector,tower,llava_keys", CONNECTORS)
def test_backbone_connector_roundtrip(towers: Path, images, backbone: str, connector: str, tower: str,
                                     llava_keys: bool) -> None:
    cur, pri = images
    folder = make_tiny_libra(towers / f"{backbone}-{connector}-{tower}", FIXTURES / "tokenizer", backbone, connector,
                             f"../tiny-{tower}", llava_keys=llava_keys, hidden=32, intermediate=64, heads=2, kv_heads=1,
                             mm_hidden=32, select_layer=None if connector == "TAC" else -2)
    lm = load_model(str(folder), dtype="float32", device="cpu")
    # weights survived the original layout (incl. the LLaVA key layout of the projector)
    from safetensors.torch import load_file

    saved = load_file(str(folder / "model.safetensors"))
    own = lm.model.state_dict()
    for k, v in saved.items():
        k2 = k if k in own else k.replace("model.mm_projector.", "model.mm_projector.projector.")
        assert torch.equal(own[k2], v), k
    r = generate_report(lm, cur, pri, settings=GenerationSettings(max_new_tokens=4))
    assert 1 <= len(r.token_ids) <= 4
    # generate asks for the last position's logits only where forward names logits_to_keep (else every prefill
    # computes [prompt, vocab] float32 logits: 736 MB at the 3b shape)
    assert lm.model._supports_logits_to_keep()
    # the image reaches the logits; only TAC looks at the prior
    a = _logits(lm, cur, pri)
    b = _logits(lm, pri, pri)
    c = _logits(lm, cur, cur)
    assert (a - b).abs().max() > 1e-6
    if connector == "TAC":
        assert (a - c).abs().max() > 1e-6
    else:
        assert torch.equal(a, c)


@pytest.fixture(scope="module")
def base(towers: Path) -> Path:
    return make_tiny_libra(towers / "base", FIXTURES / "tokenizer", "libra", "TAC", "../tiny-dinov2", seed=1)


def test_projector_only_folder_on_base(towers: Path, base: Path) -> None:
    torch.manual_seed(7)
    donor = make_tiny_libra(towers / "donor", FIXTURES / "tokenizer", "libra", "TAC", "../tiny-dinov2", seed=7)
    from safetensors.torch import load_file

    proj = {k: v for k, v in load_file(str(donor / "model.safetensors")).items() if k.startswith("model.mm_projector.")}
    pfolder = towers / "proj-only"
    pfolder.mkdir()
    torch.save(proj, pfolder / "mm_projector.bin")
    shutil.copy(donor / "config.json", pfolder / "config.json")
    lm = load_model(str(pfolder), model_base=str(base), dtype="float32", device="cpu")
    assert lm.kind == "projector"
    base_sd = load_file(str(base / "model.safetensors"))
    sd = lm.model.state_dict()
    for k, v in proj.items():
        assert torch.equal(sd[k], v)
    assert torch.equal(sd["model.layers.0.self_attn.q_proj.weight"], base_sd["model.layers.0.self_attn.q_proj.weight"])


def test_lora_folder_on_base_equals_manual_merge(towers: Path, base: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    from libra_cli.model.modeling import LibraLlamaForCausalLM

    model = LibraLlamaForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
        new_proj = {n: p.detach().clone() + 0.01 for n, p in peft_model.named_parameters() if "mm_projector" in n}
    lfolder = towers / "lora"
    peft_model.save_pretrained(lfolder)
    torch.save(new_proj, lfolder / "non_lora_trainables.bin")  # keys: base_model.model.model.mm_projector.*
    shutil.copy(base / "config.json", lfolder / "config.json")

    lm = load_model(str(lfolder), model_base=str(base), dtype="float32", device="cpu")
    assert lm.kind == "lora"
    # merge by hand: W + B @ A * alpha / r, and the projector from non_lora_trainables
    base_sd = load_file(str(base / "model.safetensors"))
    lora_sd = {n: p.detach() for n, p in peft_model.named_parameters() if "lora_" in n}
    sd = lm.model.state_dict()
    checked = 0
    for key, w in base_sd.items():
        mod = key[: -len(".weight")]
        a = lora_sd.get(f"base_model.model.{mod}.lora_A.default.weight")
        if a is None:
            continue
        b = lora_sd[f"base_model.model.{mod}.lora_B.default.weight"]
        torch.testing.assert_close(sd[key], w + (b @ a) * 2.0, rtol=0, atol=1e-6)
        checked += 1
    assert checked == 2 * 7
    for k, v in new_proj.items():
        assert torch.equal(sd[k[len("base_model.model."):]], v)


def test_cls_patch_and_maira_feature_norm(towers: Path, images) -> None:
    """``cls_patch`` keeps the CLS token; the MAIRA flag takes the encoder's normed last_hidden_state."""
    cur, pri = images
    cls = make_tiny_libra(towers / "cls", FIXTURES / "tokenizer", "libra", "mlp2x_gelu", "../tiny-dinov2",
                          mm_vision_select_feature="cls_patch", select_layer=-1)
    lm = load_model(str(cls), dtype="float32", device="cpu")
    assert lm.num_image_tokens == 26
    r = generate_report(lm, cur, pri, settings=GenerationSettings(max_new_tokens=2))
    assert r.token_ids
    maira = make_tiny_libra(towers / "maira", FIXTURES / "tokenizer", "libra", "mlp2x_gelu", "../tiny-dinov2",
                            select_layer=-1, use_maira_feature_norm=True)
    lm2 = load_model(str(maira), dtype="float32", device="cpu")
    from libra_cli.generation import Sample, prepare_batch

    pix = prepare_batch(lm2, [Sample(cur)]).pixel_values[:, 0]
    with torch.no_grad():
        normed = lm2.model.encode_images(pix)
        out = lm2.model.vision_tower.vision_tower(pix, output_hidden_states=True)
    assert torch.allclose(normed[:, 0], out.last_hidden_state[:, 1:])
    assert not torch.allclose(normed[:, 0], out.hidden_states[-1][:, 1:])
