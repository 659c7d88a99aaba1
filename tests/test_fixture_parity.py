"""The original code's recorded outputs for ``tiny-libra-tac`` are reproduced exactly (issue 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from libra_cli.checkpoint import load_model
from libra_cli.generation import GenerationSettings, generate_report
from libra_cli.images import ImageProcessorConfig, load_and_preprocess
from libra_cli.prompts import build_prompt, expand_image_tokens, tokenize_with_image
from tests.conftest import CXR, FIXTURES

EXP_DIR = FIXTURES / "expected" / "tiny-libra-tac"


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((FIXTURES / "expected" / "tiny-libra-tac.json").read_text())


@pytest.fixture(scope="module")
def loaded():
    return load_model(str(FIXTURES / "tiny-libra-tac"), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    cfg = ImageProcessorConfig.from_pretrained(FIXTURES / "tiny-rad-dino")
    return torch.from_numpy(np.stack([load_and_preprocess(CXR / "current.jpg", cfg),
                                      load_and_preprocess(CXR / "prior.jpg", cfg)]))


def test_pixel_values(pixels: torch.Tensor) -> None:
    exp = np.load(EXP_DIR / "pixel_values_real.npy")[:, 0]
    assert np.abs(pixels.numpy() - exp).max() <= 1e-6


def test_prompt_and_input_ids(loaded, expected) -> None:
    text, stop = build_prompt(conv_mode="libra_v1")
    assert text == expected["prompt"]["templated_prompt"]
    assert stop == expected["prompt"]["stop_str"]
    assert tokenize_with_image(text, loaded.tokenizer) == expected["prompt"]["input_ids"]
    assert loaded.conv_mode == "libra_v1"


def test_encoder_connector_logits(loaded, pixels, expected) -> None:
    m = loaded.model
    with torch.no_grad():
        enc = torch.stack([m.encode_images(pixels[0:1]), m.encode_images(pixels[1:2])])
        assert (enc - torch.from_numpy(np.load(EXP_DIR / "vision_tower_out_real.npy"))).abs().max() <= 1e-4
        proj = m.connect(enc[0], enc[1])
        assert (proj - torch.from_numpy(np.load(EXP_DIR / "projector_out_real.npy"))).abs().max() <= 1e-4
        ids = torch.tensor([expand_image_tokens(expected["prompt"]["input_ids"], loaded.num_image_tokens)])
        assert ids.shape[1] == expected["logits"]["seq_len_after_splice"]
        logits = m(input_ids=ids, pixel_values=pixels[None]).logits
        assert (logits - torch.from_numpy(np.load(EXP_DIR / "logits_real.npy"))).abs().max() <= 1e-4
        same = m(input_ids=ids, pixel_values=torch.stack([pixels[0], pixels[0]])[None]).logits
        exp_same = torch.from_numpy(np.load(EXP_DIR / "logits_real_current_as_prior.npy"))
        assert (same - exp_same).abs().max() <= 1e-4
        # the prior matters: TAC output must move when only the prior changes
        assert (same - logits).abs().max() > 1.0


@pytest.mark.parametrize(
    "key,prior,settings",
    [
        ("greedy", True, GenerationSettings(max_new_tokens=24)),
        ("beam", True, GenerationSettings(max_new_tokens=24, num_beams=3, length_penalty=2.0, no_repeat_ngram_size=3)),
        ("greedy_current_only", False, GenerationSettings(max_new_tokens=24)),
    ],
)
def test_generation_matches_original(loaded, expected, key, prior, settings) -> None:
    r = generate_report(loaded, CXR / "current.jpg", CXR / "prior.jpg" if prior else None, settings=settings)
    assert r.token_ids == expected[key]["sequences"][0]["new_token_ids"]
    assert r.text == expected[key]["returned_text"]
    assert r.prior_is_dummy is (not prior)


def test_cli_infer_prints_original_text(expected, tmp_path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-m", "libra_cli", "infer", "--model", str(FIXTURES / "tiny-libra-tac"),
         str(CXR / "current.jpg"), str(CXR / "prior.jpg"), "--temperature", "0", "--max-new-tokens", "24",
         "--device", "cpu", "--dtype", "float32"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected["greedy"]["returned_text"]


def test_cli_infer_json(expected, tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "libra_cli", "infer", "-m", str(FIXTURES / "tiny-libra-tac"), str(CXR / "current.jpg"),
         "--max-new-tokens", "24", "--device", "cpu", "--json"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["token_ids"] == expected["greedy_current_only"]["sequences"][0]["new_token_ids"]
    assert d["prior_is_dummy"] is True
    assert d["settings"]["max_new_tokens"] == 24
    assert {"encode_s", "generate_s", "tokens_per_s"} <= set(d["timings"])
    assert "dummy prior" in out.stderr


def test_streamed_text_equals_final_text(loaded, expected) -> None:
    import io

    from libra_cli.streaming import TerminalStreamer

    buf = io.StringIO()
    r = generate_report(loaded, CXR / "current.jpg", CXR / "prior.jpg", settings=GenerationSettings(max_new_tokens=24),
                        streamer=TerminalStreamer(loaded, out=buf))
    assert buf.getvalue() == r.text + "\n"
    assert r.text == expected["greedy"]["returned_text"]
