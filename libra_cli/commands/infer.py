"""``libra infer``: one study (current + optional prior X-ray) -> Findings text."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from libra_cli.commands.options import GenerationFlags, Group, ModelFlags, OutputFlags, with_flags
from libra_cli.commands.pacs_flags import DicomwebFlags, ReportFlags
from libra_cli.errors import InputError


def register(app: typer.Typer) -> None:
    app.command("infer")(infer)


@with_flags(model=ModelFlags, gen=GenerationFlags, out=OutputFlags,
            pacs=Group(DicomwebFlags, exclude=("studies", "since")), reports=ReportFlags)
def infer(
    current: Annotated[str | None, typer.Argument(help="Current X-ray: JPEG/PNG/DICOM path or URL.", show_default=False)] = None,
    prior: Annotated[str | None, typer.Argument(help="Prior X-ray of the same patient (omit: the current image is reused).")] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Question (default: the model's findings query).")] = None,
    context: Annotated[str | None, typer.Option("--context", help="Clinical context (indication, history, ...) appended to the prompt.")] = None,
    interactive: Annotated[bool, typer.Option("--interactive", "-i", help="Ask follow-up questions about the same images.")] = False,
    example: Annotated[bool, typer.Option("--example", help="Use the example current/prior X-rays shipped with libra (try: --model demo --example).")] = False,
    *,
    model: ModelFlags,
    gen: GenerationFlags,
    out: OutputFlags,
    pacs: DicomwebFlags,
    reports: ReportFlags,
) -> None:
    """Write the Findings for a current X-ray, compared with the prior one (files, URLs, or a study on a PACS)."""
    from rich.console import Console

    from libra_cli.images import load_image
    from libra_cli.prompts import get_template

    err = Console(stderr=True, soft_wrap=True, quiet=out.quiet)
    if example:
        if current or prior:
            raise InputError("--example uses the shipped example pair; drop the image arguments or --example")
        from libra_cli.paths import EXAMPLE_CURRENT, EXAMPLE_PRIOR

        current, prior = str(EXAMPLE_CURRENT), str(EXAMPLE_PRIOR)
    # fail fast on user mistakes, before torch is even imported
    targets = reports.targets(folders=False, dicomweb=pacs.study is not None)
    study = pacs.open_study(lambda line: err.print(line, highlight=False, markup=False), bool(current or prior))
    if study is None and not current:
        raise InputError("no image: give the current X-ray (and the prior), or --example for the shipped pair")
    source = _report_source(targets, study, current, prior)
    cur_src, prior_src = (study.current, study.prior) if study is not None else (current, prior or None)
    cur_img = load_image(cur_src)
    prior_img = load_image(prior_src) if prior_src is not None else None
    if study is not None:
        current, prior = study.url_of(study.resolved.current), study.url_of(study.resolved.prior)
    if model.conv_mode:
        get_template(model.conv_mode)

    from libra_cli.generation import generate_report
    from libra_cli.streaming import TerminalStreamer

    settings = gen.settings()
    as_json = out.as_json
    from libra_cli.checkpoint.memory import Workload

    loaded = model.load(quiet=out.quiet, workload=Workload.for_settings(settings))
    if getattr(loaded.config, "libra_demo", False):
        from libra_cli.demo import NOTICE

        err.print(f"[bold yellow]{NOTICE}[/]")
    if prior_img is None and loaded.uses_prior:
        err.print("[yellow]notice:[/] no prior image given: the current image is used as the prior (dummy prior)")
    stream = not as_json and sys.stdout.isatty() and settings.num_beams == 1 and settings.num_return_sequences == 1
    streamer = TerminalStreamer(loaded) if stream else None
    if model.jpeg_draft and study is None:  # decode again from the files, at reduced size
        cur_img, prior_img = current, prior
    report = generate_report(loaded, cur_img, prior_img, prompt, context, settings, streamer=streamer)
    written = targets.write(report.text, source, model=loaded.name, revision=loaded.info.get("revision")) if source else {}
    extra = {"dicomweb": study.resolved.to_dict()} if study is not None else {}
    _render(report, loaded, as_json, streamer is not None, current, prior, err, extra | ({"reports": written} if written else {}))
    _report_lines(written, err)
    if as_json:
        return
    if interactive:
        _chat(loaded, cur_img, prior_img, prompt, context, settings, report.text, err)


def _report_source(targets, study, current, prior):  # noqa: ANN001, ANN202
    """What --fhir/--sr/--stow describe: the DICOMweb study, or the DICOM files given (None without those flags)."""
    if not targets.wanted():
        return None
    from libra_cli.pacs.outputs import ReportSource

    return ReportSource.from_study(study) if study is not None else ReportSource.from_files(current, prior)


def _report_lines(written, err) -> None:  # noqa: ANN001
    """What was written and stored, on stderr; a refused STOW is an error once the report is out."""
    from libra_cli.pacs.outputs import describe

    for line in describe(written):
        err.print(line, highlight=False, markup=False)
    if written.get("stow_error"):
        raise InputError(written["stow_error"])


def _render(report, loaded, as_json, streamed, current, prior, err, extra=None) -> None:  # noqa: ANN001
    """The report on stdout (text, candidates with scores, or JSON); timings on stderr."""
    if report.ccd is not None and not as_json:
        err.print(f"[dim]CCD guidance: {report.ccd['guide']}[/]", highlight=False)
    if as_json:
        result = report.to_dict()
        result.update(model=loaded.name, conv_mode=loaded.conv_mode, load_s=loaded.load_seconds,
                      dtype=str(loaded.dtype).replace("torch.", ""), device=loaded.device,
                      current=current, prior=prior, revision=loaded.info.get("revision"),
                      commit=loaded.info.get("commit"), **(extra or {}))
        typer.echo(json.dumps(result, ensure_ascii=False, indent=2))
        return
    if not streamed:
        if len(report.candidates) > 1:
            for i, cand in enumerate(report.candidates):
                score = f" (score {cand.score:.4f})" if cand.score is not None else ""
                typer.echo(f"[{i + 1}]{score} {cand.text}")
        else:
            typer.echo(report.text)
    t = report.timings
    err.print(f"[dim]{int(t['new_tokens'])} tokens in {t['generate_s']:.2f}s ({t['tokens_per_s']:.1f} tok/s); "
              f"model loaded in {loaded.load_seconds:.1f}s[/]")


def _chat(loaded, cur_img, prior_img, prompt, context, gen, first_answer, err) -> None:  # noqa: ANN001
    """Follow-up questions about the same images (the original ``libra.serve.cli``)."""
    from libra_cli.generation import default_query, generate_report
    from libra_cli.streaming import TerminalStreamer

    history = [(prompt or default_query(loaded), first_answer)]
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
