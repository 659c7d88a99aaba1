"""Tiny random LLM judges in the published judges' formats, for offline equality tests of GREEN and CRIMSON.

- GREEN-RadLlama2-7b: ``LlamaForCausalLM`` + a SentencePiece Llama tokenizer (the shared fixture);
- GREEN-RadPhi2: ``PhiForCausalLM`` + a byte-level BPE with ``<|endoftext|>`` (CodeGen's layout);
- MedGemmaCRIMSON: ``Gemma3ForConditionalGeneration`` (SigLIP tower) + a BPE with Gemma's specials and
  Gemma 3's chat template (the system message folded into the first user turn).

Attention heads are 32 wide (vLLM's CPU attention takes 32 and up). Weights are seeded; the stop token's output row is scaled so that generation ends after tens to
hundreds of tokens instead of running to the length limit, and the weights are wide enough that
greedy choices are not near-ties (engines summing in another order pick the same tokens). The text
is meaningless: these prove that libra runs the packages' prompts, settings and parsers, not what
the real judges say.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n"
)
GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                  "<end_of_image>", "<image_soft_token>")


def judge_corpus() -> list[str]:
    """Text the tiny tokenizers are trained on: both judges' prompts and MIMIC-like reports."""
    from libra_cli.metrics.judges import crimson_prompt as cp
    from libra_cli.metrics.judges.green import make_prompt
    from tests.builders.reports import make_pairs

    refs, hyps = make_pairs(200, seed=3)
    return [make_prompt("", ""), *(getattr(cp, n) for n in dir(cp) if n.isupper()), *refs, *hyps]


def _boost_stop(weight: Any, row: int, scale: float, seed: int) -> None:
    """Make ``row`` (the stop token) the greedy choice for some hidden states: ends generation early."""
    import torch

    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(weight.shape[1], generator=g)
    weight.data[row] = direction / direction.norm() * scale


def _tokenizer_class(out: Path) -> None:
    """transformers 5 writes ``TokenizersBackend``, which transformers 4 (the GREEN reference) cannot load."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def _save(model: Any, out: Path) -> None:
    model.eval()
    model.save_pretrained(out)
    gen = out / "generation_config.json"
    if gen.exists():
        gen.unlink()  # like the published judges' configs: generation settings come from the package


def build_green_llama(out: Path, tokenizer_dir: Path, seed: int = 0, stop_scale: float = 6.0) -> Path:
    """GREEN-RadLlama2-7b's layout: ``LlamaForCausalLM`` with the Llama SentencePiece tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(tokenizer_dir / name, out / name)
    vocab = len(json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"])
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0, initializer_range=0.2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    _boost_stop(model.lm_head.weight, 2, stop_scale, seed)
    _save(model, out)
    return out


def _bpe(corpus: Iterable[str], specials: list[str], vocab_size: int, byte_level: bool) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    texts = list(corpus)
    if byte_level:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # Gemma: spaces as "▁", no pre-splitting
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.decoder = decoders.Replace("▁", " ")
        alphabet = sorted({c for t in texts for c in t.replace(" ", "▁")})
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def build_green_phi2(out: Path, seed: int = 1, stop_scale: float = 6.0) -> Path:
    """GREEN-RadPhi2's layout: ``PhiForCausalLM`` with a byte-level BPE whose only special is ``<|endoftext|>``."""
    import torch
    from transformers import PhiConfig, PhiForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = _bpe(judge_corpus(), ["<|endoftext|>"], 1200, byte_level=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", model_max_length=2048)
    fast.save_pretrained(out)
    _tokenizer_class(out)
    config = PhiConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=2, max_position_embeddings=4096, partial_rotary_factor=0.5, bos_token_id=0,
                       eos_token_id=0, initializer_range=0.2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = PhiForCausalLM(config)
    _boost_stop(model.lm_head.weight, 0, stop_scale, seed)
    _save(model, out)
    return out


def build_crimson_gemma3(out: Path, seed: int = 2, stop_scale: float = 3.0,
                         generation: dict[str, Any] | None = None, tie: bool = False) -> Path:
    """MedGemmaCRIMSON's layout: ``Gemma3ForConditionalGeneration``, Gemma's specials and chat template.

    ``generation``: write these as the model's ``generation_config.json`` (the package then uses it).
    ``tie``: MedGemma ties its output layer to the embeddings; a random tied judge only repeats its last
    token (a newline), so the tiny one has its own output layer and writes varied tokens.
    """
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        GenerationConfig,
        PreTrainedTokenizerFast,
        SiglipVisionConfig,
    )
    from transformers.models.gemma3.configuration_gemma3 import Gemma3TextConfig

    out.mkdir(parents=True, exist_ok=True)
    tok = _bpe(judge_corpus(), list(GEMMA_SPECIALS), 1500, byte_level=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<pad>", model_max_length=32768, chat_template=GEMMA3_CHAT_TEMPLATE,
                                   add_bos_token=False)
    fast.save_pretrained(out)
    _tokenizer_class(out)
    ids = {s: tok.token_to_id(s) for s in GEMMA_SPECIALS}
    text = Gemma3TextConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=32768,
                            sliding_window=64, layer_types=["sliding_attention", "full_attention"],
                            initializer_range=0.2, pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"],
                            eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]])
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    config = Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
                          boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
                          image_token_index=ids["<image_soft_token>"], initializer_range=0.2,
                          eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]], pad_token_id=ids["<pad>"],
                          bos_token_id=ids["<bos>"], tie_word_embeddings=tie)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    _boost_stop(model.get_output_embeddings().weight, ids["<eos>"], stop_scale, seed)
    _save(model, out)
    if generation is not None:
        GenerationConfig(**generation).save_pretrained(out)
    return out


# Both tiny CRIMSON judges ship a generation config (the package then uses it): a random judge never writes the
# stop token in 8,192 greedy steps, which the no-config path would run (that path is a unit test).
CRIMSON_GENERATION = {"do_sample": False, "max_new_tokens": 40, "eos_token_id": [1, 5], "pad_token_id": 0}


def judge_pairs() -> dict[str, dict[str, list[str]]]:
    """The pairs each tiny judge is run on: MIMIC-like pairs plus empty, whitespace-only, over-long
    (more than GREEN's 300-word cut) and non-ASCII reports."""
    from tests.builders.reports import make_pairs

    refs, hyps = make_pairs(11, seed=7)
    long_ref = " ".join(["The lungs are clear."] * 80)  # 320 words: GREEN keeps 300
    long_hyp = " ".join(["No pleural effusion."] * 20)
    refs += ["", "   \n ", "No acute cardiopulmonary process.", long_ref, "Émphysème – nodule ≥5 mm ‘stable’ (½ cm)."]
    hyps += ["No acute findings.", "", "   ", long_hyp, "Emphysema; nodule 5 mm, stable."]
    return {
        "radllama2": {"refs": refs, "hyps": hyps},
        "radphi2": {"refs": refs[8:], "hyps": hyps[8:]},
        "crimson": {"refs": refs[:4] + refs[11:15], "hyps": hyps[:4] + hyps[11:15]},
        "crimson_guidelines": {"refs": refs[4:6] + refs[11:13], "hyps": hyps[4:6] + hyps[11:13]},
    }


def build_judges(out: Path, tokenizer_dir: Path) -> dict[str, Path]:
    """Every tiny judge, from fixed seeds, and ``out/hf/hub``: each under its published hub id, and a
    second CRIMSON judge as ``google/medgemma-4b-it`` (the package prompts any other model with its guidelines)."""
    from tests.builders.scorers import folder_files, install_in_hf_cache

    built = {
        "StanfordAIMI/GREEN-radllama2-7b": build_green_llama(out / "green-radllama2", tokenizer_dir),
        "StanfordAIMI/GREEN-RadPhi2": build_green_phi2(out / "green-radphi2"),
        "rajpurkarlab/medgemma-4b-it-crimson": build_crimson_gemma3(out / "crimson",
                                                                    generation={**CRIMSON_GENERATION, "max_new_tokens": 24}),
        "google/medgemma-4b-it": build_crimson_gemma3(out / "crimson-genconfig", seed=3,
                                                      generation=CRIMSON_GENERATION),
    }
    for repo_id, folder in built.items():
        install_in_hf_cache(out / "hf" / "hub", repo_id, folder_files(folder))
    return built
