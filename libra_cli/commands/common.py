"""Options shared by the commands that load a model and generate (infer, batch, serve).

Typer has no option groups, so shared options are ``Annotated`` aliases plus two builders that
turn them into core objects: one definition of each flag for every command.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

MODEL_HELP = "Hub id (e.g. X-iZhang/libra-v1.0-7b) or checkpoint folder (full, LoRA or projector-only)."

ModelOpt = Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP, rich_help_panel="Model")]
ModelBaseOpt = Annotated[str | None, typer.Option("--model-base", help="Base model for LoRA / projector-only folders.", rich_help_panel="Model")]
VisionTowerOpt = Annotated[str | None, typer.Option("--vision-tower", help="Override the encoder path or hub id from config.json.", rich_help_panel="Model")]
ConvModeOpt = Annotated[str | None, typer.Option("--conv-mode", help="Prompt template (default: the one the model was trained with).", rich_help_panel="Model")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto | bfloat16 | float16 | float32 (auto: checkpoint dtype on GPU, float32 on CPU).", rich_help_panel="Model")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cuda | cuda:N | mps | cpu.", rich_help_panel="Model")]
AttnOpt = Annotated[str, typer.Option("--attn", help="auto | sdpa | eager | flash_attention_2.", rich_help_panel="Model")]
Load4Opt = Annotated[bool, typer.Option("--load-4bit", help="4-bit weights (bitsandbytes extra).", rich_help_panel="Model")]
Load8Opt = Annotated[bool, typer.Option("--load-8bit", help="8-bit weights (bitsandbytes extra).", rich_help_panel="Model")]

MaxNewOpt = Annotated[int, typer.Option("--max-new-tokens", help="Maximum tokens to generate.", rich_help_panel="Generation")]
TempOpt = Annotated[float, typer.Option("--temperature", help="0 = greedy / beam search; > 0 samples.", rich_help_panel="Generation")]
TopPOpt = Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass.", rich_help_panel="Generation")]
TopKOpt = Annotated[int | None, typer.Option("--top-k", help="Top-k sampling.", rich_help_panel="Generation")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed for sampling.", rich_help_panel="Generation")]
BeamsOpt = Annotated[int, typer.Option("--num-beams", help="Beam width (paper evaluation: 10).", rich_help_panel="Generation")]
LenPenOpt = Annotated[float, typer.Option("--length-penalty", help="Beam length penalty (paper: 2).", rich_help_panel="Generation")]
NgramOpt = Annotated[int | None, typer.Option("--no-repeat-ngram-size", help="Default: 3 with beams (as the original), else off.", rich_help_panel="Generation")]
NRetOpt = Annotated[int, typer.Option("--num-return-sequences", help="Candidates to return (with scores).", rich_help_panel="Generation")]
RepPenOpt = Annotated[float | None, typer.Option("--repetition-penalty", help="Repetition penalty.", rich_help_panel="Generation")]


def load(model: str, model_base: str | None, vision_tower: str | None, conv_mode: str | None, dtype: str,
         device: str, attn: str, load_4bit: bool, load_8bit: bool) -> Any:
    """Load the model behind the shared flags, with a spinner."""
    from rich.console import Console

    from libra_cli.checkpoint import load_model

    with Console(stderr=True).status(f"loading {model} ..."):
        return load_model(model, model_base=model_base, vision_tower=vision_tower, dtype=dtype, device=device,
                          attn=attn, conv_mode=conv_mode, load_4bit=load_4bit, load_8bit=load_8bit)


def settings(max_new_tokens: int, temperature: float, top_p: float | None, top_k: int | None, seed: int | None,
             num_beams: int, length_penalty: float, no_repeat_ngram_size: int | None, num_return_sequences: int,
             repetition_penalty: float | None) -> Any:
    """GenerationSettings from the shared flags (validated)."""
    from libra_cli.generation import GenerationSettings

    s = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                           num_beams=num_beams, length_penalty=length_penalty,
                           no_repeat_ngram_size=no_repeat_ngram_size, num_return_sequences=num_return_sequences,
                           repetition_penalty=repetition_penalty, seed=seed)
    s.validate()
    return s
