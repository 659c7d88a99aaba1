"""The web page of ``libra serve`` (Gradio, the ``serve`` extra): upload two X-rays, read the streamed draft.

All request handling is :class:`~libra_cli.serve.server.Server`'s; this module only lays out
components and forwards their events.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from libra_cli.errors import LibraError
from libra_cli.paths import EXAMPLES as EXAMPLES_DIR
from libra_cli.requests import CCDSettings
from libra_cli.serve.server import (
    DECODING_MODES,
    DUMMY_PRIOR_NOTICE,
    RESEARCH_NOTICE,
    CCDOptions,
    ServeOptions,
    Server,
    check_port,
    decoding_settings,
    file_path,
    with_ccd,
)

EXPERTS = {"DenseNet": "densenet", "MedSigLIP": "medsiglip"}

CSS = """
#libra-banner {border-left: 6px solid #b45309; background: #fffbeb; color: #78350f; padding: 10px 14px;
  border-radius: 6px; font-size: 0.95rem}
#libra-banner h1 {font-size: 1.35rem; margin: 0 0 4px 0; color: #1f2937}
.libra-tag {display: inline-block; font-weight: 700; font-size: 0.8rem; letter-spacing: .04em; padding: 2px 8px;
  border-radius: 4px; margin-bottom: 4px}
.libra-tag.current {background: #1d4ed8; color: #fff}
.libra-tag.prior {background: #047857; color: #fff}
.libra-tag.dummy {background: #b45309; color: #fff}
.libra-notice {border: 1px solid #f59e0b; background: #fffbeb; color: #78350f; padding: 8px 12px; border-radius: 6px}
.libra-error {border: 1px solid #dc2626; background: #fef2f2; color: #991b1b; padding: 8px 12px; border-radius: 6px;
  font-weight: 600}
.libra-status {color: #374151; font-size: 0.9rem}
#libra-footer {color: #6b7280; font-size: 0.85rem; text-align: center}
"""


def _tag(kind: str, text: str) -> str:
    return f'<span class="libra-tag {kind}">{html.escape(text)}</span>'


def _error_html(msg: str) -> str:
    return f'<div class="libra-error" role="alert">⚠ {html.escape(msg)}</div>'


def _status_html(msg: str) -> str:
    return f'<div class="libra-status" role="status">{html.escape(msg)}</div>' if msg else ""


def build_app(server: Server) -> Any:
    """The Gradio Blocks page for ``server``.

    Long: a declarative layout (components in reading order, then their events); every decision is
    the server's.
    """
    import gradio as gr

    opts = server.options
    examples = (EXAMPLES_DIR / "current.jpg", EXAMPLES_DIR / "prior.jpg")

    def previews(cur_f: Any, prior_f: Any) -> tuple[Any, ...]:
        cur_img, cur_err = server.check_image(cur_f, "current")
        prior_img, prior_err = server.check_image(prior_f, "prior")
        errors = [e for e in (cur_err, prior_err) if e]
        cur_label = "CURRENT study — the one being reported"
        if prior_img is not None:
            prior_label, prior_prev, tag = "PRIOR study — earlier comparison", prior_img, _tag("prior", "PRIOR: uploaded")
        elif cur_img is not None and not prior_err:
            prior_label, prior_prev, tag = ("PRIOR — dummy (copy of the current image)", cur_img,
                                            _tag("dummy", "PRIOR: dummy copy of current"))
        else:
            prior_label, prior_prev, tag = "PRIOR study — none", None, ""
        notice = ""
        if errors:
            notice = "".join(_error_html(e) for e in errors)
        elif cur_img is not None and prior_img is None:
            notice = f'<div class="libra-notice" id="dummy-prior-notice" role="note">{tag} {html.escape(DUMMY_PRIOR_NOTICE)}</div>'
        elif cur_img is not None:
            notice = f'<div class="libra-status">{_tag("current", "CURRENT: uploaded")} {tag} The model compares the two studies.</div>'
        return (gr.update(value=cur_img, label=cur_label), gr.update(value=prior_prev, label=prior_label), notice)

    def generate(model: str, cur_f: Any, prior_f: Any, prompt: str, context: str, mode: str, max_new: float,
                 temperature: float, top_p: float, top_k: float, beams: float, length_penalty: float,
                 seed: float | None, ccd_on: bool, expert: str, alpha: float, beta: float, gamma: float,
                 threshold: float, labels_f: Any = None, compare: bool = False) -> Iterator[tuple[Any, ...]]:
        hidden = gr.update(visible=False)
        baseline_box = gr.update(value="", visible=bool(ccd_on and compare))
        try:
            s = decoding_settings(mode, int(max_new), float(temperature), float(top_p), int(top_k), int(beams),
                                  float(length_penalty), None if seed is None else int(seed))
            labels = file_path(labels_f) or opts.ccd.settings.labels
            s = with_ccd(s, CCDOptions(bool(ccd_on), CCDSettings(float(alpha), float(beta), float(gamma), float(threshold),
                                                                 EXPERTS.get(expert, expert), labels)))
        except LibraError as exc:
            yield "", _error_html(str(exc)), hidden, baseline_box, hidden, hidden
            return
        for u in server.run(model, cur_f, prior_f, prompt, context, s, compare=bool(ccd_on and compare)):
            if u.error:
                yield "", _error_html(u.error), hidden, baseline_box, hidden, hidden
            elif u.done:
                base = gr.update(value=u.baseline or "", visible=u.baseline is not None)
                yield (u.text, _status_html(u.status), gr.update(value=u.download, visible=True), base,
                       *(gr.update(value=f, visible=f is not None) for f in (u.fhir, u.sr)))
            else:
                yield u.text, _status_html(u.status), hidden, baseline_box, hidden, hidden

    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
                           font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"])
    with gr.Blocks(title="Libra — chest X-ray report draft", analytics_enabled=False) as demo:
        demo.libra_theme, demo.libra_css = theme, CSS  # applied by launch() (Gradio 6 takes them there)
        gr.HTML(f'<div id="libra-banner"><h1>Libra — temporal chest X-ray report draft</h1>'
                f'<strong role="note" id="research-notice">⚠ {html.escape(RESEARCH_NOTICE)}</strong></div>')
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=320):
                with gr.Row():
                    with gr.Column(min_width=260):
                        gr.HTML(_tag("current", "CURRENT X-ray (required)"))
                        cur_file = gr.File(label="Drop the current study: JPEG, PNG or DICOM", elem_id="current-file",
                                           height=110)
                        cur_prev = gr.Image(label="CURRENT study", interactive=False, elem_id="current-preview",
                                            height=300, buttons=["fullscreen"])
                    with gr.Column(min_width=260):
                        gr.HTML(_tag("prior", "PRIOR X-ray (optional, earlier study)"))
                        prior_file = gr.File(label="Drop the prior study: JPEG, PNG or DICOM", elem_id="prior-file",
                                             height=110)
                        prior_prev = gr.Image(label="PRIOR study — none", interactive=False, elem_id="prior-preview",
                                              height=300, buttons=["fullscreen"])
                pair_notice = gr.HTML("", elem_id="pair-notice")
                example_btn = gr.Button("Load the example pair (current + prior)", size="sm", elem_id="example-btn",
                                        visible=all(p.is_file() for p in examples))
                prompt = gr.Textbox(label="Prompt", placeholder="default: the model's findings question", lines=2,
                                    elem_id="prompt")
                context = gr.Textbox(label="Clinical context (optional)", lines=2, elem_id="context",
                                     placeholder="e.g. INDICATION: shortness of breath. HISTORY: prior lobectomy.")
                with gr.Accordion("Model and decoding", open=False, elem_id="settings"):
                    model = gr.Dropdown(server.choices, value=server.default_model, label="Model",
                                        allow_custom_value=False, elem_id="model")
                    mode = gr.Radio(list(DECODING_MODES), value="Greedy", label="Decoding", elem_id="mode")
                    max_new = gr.Slider(1, 2048, value=opts.max_new_tokens, step=1, label="Max new tokens",
                                        elem_id="max-new-tokens")
                    with gr.Row():
                        temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (sampling)")
                        top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p (sampling)")
                        top_k = gr.Slider(0, 200, value=0, step=1, label="Top-k (sampling, 0 = off)")
                    with gr.Row():
                        seed = gr.Number(value=-1, precision=0, label="Seed (sampling, -1 = random)")
                        beams = gr.Slider(2, 10, value=3, step=1, label="Beams (beam search)")
                        length_penalty = gr.Slider(0, 3, value=1.0, step=0.1, label="Length penalty (beam search)")
                ccd_controls = _ccd_controls(gr, opts.ccd)
                run_btn = gr.Button("Generate findings", variant="primary", elem_id="generate-btn")
            with gr.Column(scale=2, min_width=320):
                report = gr.Textbox(label="Findings (draft — review before use)", lines=14, max_lines=40,
                                    interactive=False, buttons=["copy"], elem_id="report", autoscroll=True)
                baseline = gr.Textbox(label="Baseline: the same request with standard decoding", lines=8,
                                      max_lines=40, interactive=False, visible=False, elem_id="baseline")
                status = gr.HTML("", elem_id="status")
                download = gr.DownloadButton("Download report (.txt)", visible=False, elem_id="download-btn")
                with gr.Row():  # DICOM uploads only (docs/pacs.md): files a clinical system can take in
                    fhir = gr.DownloadButton("Download FHIR DiagnosticReport (.json)", visible=False, elem_id="fhir-btn", size="sm")
                    sr = gr.DownloadButton("Download DICOM SR (.dcm)", visible=False, elem_id="sr-btn", size="sm")
        gr.HTML(f'<div id="libra-footer">{html.escape(RESEARCH_NOTICE)} Libra: Zhang et al., ACL 2025.</div>')

        for f in (cur_file, prior_file):
            f.change(previews, [cur_file, prior_file], [cur_prev, prior_prev, pair_notice], concurrency_limit=4,
                     show_progress="hidden")
        example_btn.click(lambda: (str(examples[0]), str(examples[1])), None, [cur_file, prior_file])
        run_btn.click(generate, [model, cur_file, prior_file, prompt, context, mode, max_new, temperature, top_p,
                                 top_k, beams, length_penalty, seed, *ccd_controls], [report, status, download, baseline, fhir, sr],
                      concurrency_limit=1, concurrency_id="libra-generate", show_progress="minimal")
    demo.queue(max_size=opts.queue_size, default_concurrency_limit=1)
    return demo


def _ccd_controls(gr: Any, options: CCDOptions) -> list[Any]:
    """The CCD toggle and sliders (the reference demo's ranges), in ``generate``'s argument order."""
    ccd = options.settings
    experts = list(EXPERTS) + ([ccd.expert] if ccd.expert not in EXPERTS.values() else [])
    expert = next((k for k, v in EXPERTS.items() if v == ccd.expert), ccd.expert)
    with gr.Accordion("Clinical Contrastive Decoding (CCD)", open=options.enabled, elem_id="ccd"):
        on = gr.Checkbox(value=options.enabled, label="Use CCD: an expert classifier steers the draft", elem_id="ccd-on")
        choice = gr.Radio(experts, value=expert, label="Expert model", elem_id="ccd-expert")
        with gr.Row():
            alpha = gr.Slider(0.0, 1.0, value=ccd.alpha, step=0.1, label="Alpha (guided prompt)", elem_id="ccd-alpha")
            beta = gr.Slider(0.0, 1.0, value=ccd.beta, step=0.1, label="Beta (token bias)", elem_id="ccd-beta")
            gamma = gr.Slider(1, 20, value=ccd.gamma, step=1, label="Gamma (bias clip, log)", elem_id="ccd-gamma")
        threshold = gr.Slider(0.0, 1.0, value=ccd.threshold, step=0.05, label="Label threshold (guidance)",
                              elem_id="ccd-threshold")
        default = f"; default {os.path.basename(ccd.labels)} from --ccd-labels" if ccd.labels else ""
        labels = gr.File(label=f"Label probabilities (optional JSON/CSV: replaces the expert{default})",
                         elem_id="ccd-labels", height=110)
        compare = gr.Checkbox(value=options.compare, label="Compare with baseline (standard decoding)", elem_id="ccd-compare")
    return [on, choice, alpha, beta, gamma, threshold, labels, compare]


def serve(options: ServeOptions, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          block: bool = True, log: Callable[[str], None] = print, server: Server | None = None) -> Any:
    """Build the page and launch it (preloading the default model so the first request is quick).

    ``server``: a request handler made elsewhere (``libra serve --api-url``: one on a remote Libra server).
    """
    check_port(host, port)  # before minutes of model loading, not after
    server = server or Server(options)
    if options.preload:
        t0 = time.perf_counter()
        try:
            server.preload()
            log(f"loaded {server.default_model} in {time.perf_counter() - t0:.1f}s")
        except LibraError as exc:  # the page still runs: another model can be chosen there
            log(f"warning: could not preload {server.default_model}: {exc}")
    demo = build_app(server)
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                allowed_paths=[str(EXAMPLES_DIR)], max_file_size="200mb", theme=demo.libra_theme,
                css=demo.libra_css, footer_links=["gradio"], quiet=False, show_error=True)
    return demo
