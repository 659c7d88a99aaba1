"""``libra infer``: one study (current + optional prior X-ray) -> Findings text."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from libra_cli.commands import common as c


def register(app: typer.Typer) -> None:
    app.command("infer")(infer)


def infer(
    current: Annotated[str, typer.Argument(help="Current X-ray: JPEG/PNG/DICOM path or URL.")],
    prior: Annotated[str | None, typer.Argument(help="Prior X-ray of the same patient (omit: the current image is reused).")] = None,
    model: c.ModelOpt = "X-iZhang/libra-v1.0-7b",
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Question (default: the model's findings query).")] = None,
    context: Annotated[str | None, typer.Option("--context", help="Clinical context (indication, history, ...) appended to the prompt.")] = None,
    model_base: c.ModelBaseOpt = None,
    vision_tower: c.VisionTowerOpt = None,
    conv_mode: c.ConvModeOpt = None,
    dtype: c.DtypeOpt = "auto",
    device: c.DeviceOpt = "auto",
    attn: c.AttnOpt = "auto",
    load_4bit: c.Load4Opt = False,
    load_8bit: c.Load8Opt = False,
    max_new_tokens: c.MaxNewOpt = 512,
    temperature: c.TempOpt = 0.0,
    top_p: c.TopPOpt = None,
    top_k: c.TopKOpt = None,
    seed: c.SeedOpt = None,
    num_beams: c.BeamsOpt = 1,
    length_penalty: c.LenPenOpt = 1.0,
    no_repeat_ngram_size: c.NgramOpt = None,
    num_return_sequences: c.NRetOpt = 1,
    repetition_penalty: c.RepPenOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print text, prompt, settings, token ids and timings as JSON.")] = False,
    interactive: Annotated[bool, typer.Option("--interactive", "-i", help="Ask follow-up questions about the same images.")] = False,
) -> None:
    """Write the Findings for a current X-ray, compared with the prior one."""
    from rich.console import Console

    from libra_cli.images import load_image
    from libra_cli.prompts import get_template

    err = Console(stderr=True, soft_wrap=True)
    # fail fast on user mistakes, before torch is even imported
    cur_img = load_image(current)
    prior_img = load_image(prior) if prior else None
    if conv_mode:
        get_template(conv_mode)

    from libra_cli.generation import generate_report
    from libra_cli.streaming import TerminalStreamer

    gen = c.settings(max_new_tokens, temperature, top_p, top_k, seed, num_beams, length_penalty,
                     no_repeat_ngram_size, num_return_sequences, repetition_penalty)
    loaded = c.load(model, model_base, vision_tower, conv_mode, dtype, device, attn, load_4bit, load_8bit)
    if prior_img is None and loaded.uses_prior:
        err.print("[yellow]notice:[/] no prior image given: the current image is used as the prior (dummy prior)")
    stream = not as_json and sys.stdout.isatty() and num_beams == 1 and num_return_sequences == 1
    streamer = TerminalStreamer(loaded) if stream else None
    report = generate_report(loaded, cur_img, prior_img, prompt, context, gen, streamer=streamer)
    if as_json:
        out = report.to_dict()
        out.update(model=loaded.name, conv_mode=loaded.conv_mode, load_s=loaded.load_seconds,
                   dtype=str(loaded.dtype).replace("torch.", ""), device=loaded.device,
                   current=current, prior=prior)
        typer.echo(json.dumps(out, ensure_ascii=False, indent=2))
        return
    if streamer is None:
        if num_return_sequences > 1:
            for i, cand in enumerate(report.candidates):
                score = f" (score {cand.score:.4f})" if cand.score is not None else ""
                typer.echo(f"[{i + 1}]{score} {cand.text}")
        else:
            typer.echo(report.text)
    t = report.timings
    err.print(f"[dim]{int(t['new_tokens'])} tokens in {t['generate_s']:.2f}s ({t['tokens_per_s']:.1f} tok/s); "
              f"model loaded in {loaded.load_seconds:.1f}s[/]")
    if interactive:
        _chat(loaded, cur_img, prior_img, prompt, context, gen, report.text, err)


def _chat(loaded, cur_img, prior_img, prompt, context, gen, first_answer, err) -> None:  # noqa: ANN001
    """Follow-up questions about the same images (the original ``libra.serve.cli``)."""
    from libra_cli.generation import DEFAULT_QUERY, generate_report
    from libra_cli.streaming import TerminalStreamer

    history = [(prompt or DEFAULT_QUERY, first_answer)]
    err.print("[dim]follow-up questions; empty line or Ctrl-D to quit[/]")
    while True:
        try:
            q = input("USER: ").strip()
        except EOFError:
            break
        if not q:
            break
        sys.stdout.write("ASSISTANT: ")
        sys.stdout.flush()
        streamer = TerminalStreamer(loaded) if sys.stdout.isatty() and gen.num_beams == 1 else None
        r = generate_report(loaded, cur_img, prior_img, q, context, gen, streamer=streamer, history=history)
        if streamer is None:
            typer.echo(r.text)
        history.append((q, r.text))
