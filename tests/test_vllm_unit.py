"""The vLLM engine's libra-side pieces, without vLLM (default suite): prompts, tokenizer, flags, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CXR, FIXTURES

CHAT_CASES = [
    # (conv_mode, query, context, history)
    ("libra_v1", "Provide a detailed description of the findings in the radiology image.", None, None),
    ("libra_v1", "Has the  effusion changed?", "Dyspnea. PA and lateral views.", None),
    ("libra_v1", "Describe.", None, [("What is shown?", "A chest X-ray."), ("Any lines?", "No.")]),
    ("libra_llama_3", "Provide a detailed description of the findings in the radiology image.", None, None),
    ("v1", "Describe the image.", "Cough.", None),
    ("llava_med_v1.5_mistral_7b", "Describe the image.", None, [("Q1", "A1")]),
    ("libra_v0", "Provide a concise impression of the radiology image.", None, None),
]


def _messages(query: str, context: str | None, history: list[tuple[str, str]] | None) -> list[dict[str, str]]:
    """What vLLM's chat parser makes of an OpenAI request: the image parts become one "<image>\\n" in front."""
    from libra_cli.prompts import CONTEXT_PREFIX

    turns = list(history or []) + [(query, None)]
    msgs = []
    for i, (q, a) in enumerate(turns):
        if i == 0:
            q = f"{q.rstrip()} {CONTEXT_PREFIX}{context.strip()}" if context else q
            q = "<image>\n" + q
        msgs.append({"role": "user", "content": q})
        if a is not None:
            msgs.append({"role": "assistant", "content": a})
    return msgs


@pytest.mark.parametrize("conv_mode,query,context,history", CHAT_CASES)
def test_chat_renders_the_prompt_libra_builds(conv_mode, query, context, history) -> None:
    from libra_cli.prompts import build_prompt
    from libra_cli.vllm_engine.chat import render_conversation

    expected, _ = build_prompt(query, conv_mode, False, context, history)
    assert render_conversation(_messages(query, context, history), conv_mode, "unused") == expected


def test_chat_images_only_uses_the_models_question() -> None:
    from libra_cli.prompts import DEFAULT_QUERY, build_prompt
    from libra_cli.vllm_engine.chat import render_conversation

    got = render_conversation([{"role": "user", "content": "<image>"}], "libra_v1", DEFAULT_QUERY)
    assert got == build_prompt(DEFAULT_QUERY, "libra_v1")[0]
    with_markers = render_conversation([{"role": "user", "content": "<image>\nDescribe."}], "libra_v1", "x",
                                       mm_use_im_start_end=True)
    assert with_markers == build_prompt("Describe.", "libra_v1", True)[0]


def test_tokenizer_encodes_and_decodes_like_libra() -> None:
    """Study prompts: libra's ids with the marker as one out-of-vocabulary id; text: libra's codec."""
    import random

    from libra_cli.checkpoint.tokenizer import SpmCodec, load_tokenizer
    from libra_cli.prompts import build_prompt, tokenize_with_image
    from libra_cli.vllm_engine.tokenizer import LibraTokenizer

    folder = FIXTURES / "tiny-libra-tac"
    tok = LibraTokenizer.from_pretrained(str(folder))
    hf = load_tokenizer(folder)
    codec = SpmCodec.for_folder(str(folder), hf)
    assert codec is not None and tok.placeholder_id == max(len(hf), 1000)
    for text in [build_prompt("Two  spaces,  and\ttabs?", "libra_v1", False, "Fever.")[0],
                 build_prompt("Describe.", "libra_llama_3")[0], "no image marker here  at all"]:
        want = tokenize_with_image(text, hf, encode=codec.encode)
        got = tok.encode_study(text)
        assert [(-200 if t == tok.placeholder_id else t) for t in got] == want
        assert tok.encode(text) == codec.encode(text)  # plain text: a typed <image> stays text
    rng = random.Random(1)
    for _ in range(50):
        ids = [rng.randrange(0, 1000) for _ in range(rng.randrange(1, 40))]
        assert tok.decode(ids) == codec.decode(ids)
        assert tok.convert_tokens_to_string(tok.convert_ids_to_tokens(ids, skip_special_tokens=True)) == codec.decode(ids)
    assert tok.max_token_id == tok.placeholder_id and not tok.get_added_vocab() and not tok.is_fast


def test_engine_flags_for_vllm(monkeypatch) -> None:
    """The vLLM settings every Libra run needs; the server's command line carries the same."""
    from libra_cli.vllm_engine import api as S
    from libra_cli.vllm_engine import options as E

    monkeypatch.setattr(E, "on_cpu", lambda: True)
    opts = E.VllmOptions(tensor_parallel_size=2, enforce_eager=True)
    kw = E.engine_kwargs("/m", "float32", opts, conv_mode="libra_v1", default_query="Q?")
    assert kw["tokenizer_mode"] == "libra" and kw["enable_prefix_caching"] is True
    assert kw["limit_mm_per_prompt"] == {"image": 2} and kw["tensor_parallel_size"] == 2
    assert kw["hf_overrides"] == {"libra_conv_mode": "libra_v1", "libra_default_query": "Q?"}
    assert kw["kv_cache_memory_bytes"] == 1 << 30 and 0 < kw["gpu_memory_utilization"] <= 0.5
    argv = S.api_argv("/m", host="127.0.0.1", port=8123, dtype="float32", options=opts, conv_mode="libra_v1")
    assert argv[1:6] == ["-m", S.API_MODULE, "--model", "/m", "--host"]
    for flag in ("--tokenizer-mode", "--enable-prefix-caching", "--enforce-eager", "--limit-mm-per-prompt",
                 "--hf-overrides", "--kv-cache-memory-bytes", "--served-model-name"):
        assert flag in argv
    assert argv[argv.index("--limit-mm-per-prompt") + 1] == '{"image": 2}'
    monkeypatch.setattr(E, "on_cpu", lambda: False)
    gpu = E.engine_kwargs("/m", "bfloat16", E.VllmOptions(gpu_memory_utilization=0.8))
    assert gpu["gpu_memory_utilization"] == 0.8 and "kv_cache_memory_bytes" not in gpu
    with pytest.raises(Exception, match="gpu-memory-utilization"):
        E.VllmOptions(gpu_memory_utilization=1.5).validate()


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI with vLLM made unimportable (a stub that raises ImportError shadows any install)."""
    stub = tmp_path / "stub"
    stub.mkdir(exist_ok=True)
    (stub / "vllm.py").write_text("raise ImportError('No module named vllm')\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(stub), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "libra_cli", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path)


@pytest.mark.parametrize("args,needle", [
    (["batch", "q.jsonl", "-m", str(FIXTURES / "tiny-libra-tac"), "--engine", "vllm"], "pip install"),
    (["serve", "--engine", "vllm", "--api", "-m", str(FIXTURES / "tiny-libra-tac")], "needs vLLM"),
    (["batch", "q.jsonl", "-m", str(FIXTURES / "tiny-libra-tac"), "--engine", "tgi"], "unknown --engine"),
    (["serve", "--engine", "vllm", "-m", str(FIXTURES / "tiny-libra-tac")], "--api"),
])
def test_engine_errors_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "q.jsonl").write_text(f'{{"question_id": 1, "image": "{CXR / "current.jpg"}"}}\n')
    out = _run(tmp_path, *args)
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
