"""``libra convert`` and ``libra export-projector``: move weights between layouts (logic in ``libra_cli.convert``)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from libra_cli.checkpoint import files
from libra_cli.commands.options import ModelBaseOpt, OutputFlags, VisionTowerOpt, with_flags


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
    app.command("export-projector")(export_projector)


ForceOpt = Annotated[bool, typer.Option("--force", help="Replace a non-empty output.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]


@with_flags(show=OutputFlags)
def convert(
    src: Annotated[str, typer.Argument(help="Checkpoint folder or hub id: full, LoRA or projector-only.")],
    out: Annotated[str, typer.Argument(help="Output folder (must not exist or be empty, unless --force).")],
    model_base: ModelBaseOpt = None,
    dtype: Annotated[str, typer.Option("--dtype", help="auto (keep the source's) | bfloat16 | float16 | float32.")] = "auto",
    bundle_vision_tower: Annotated[bool, typer.Option(
        "--bundle-vision-tower", help="Copy the encoder weights and preprocessor into OUT/vision_tower and point "
                                      "mm_vision_tower at it: the folder runs offline from anywhere.")] = False,
    max_shard_size: Annotated[str, typer.Option("--max-shard-size", help="Largest safetensors shard (e.g. 5GB, 500MB).")] = "5GB",
    vision_tower: VisionTowerOpt = None,
    device: Annotated[str, typer.Option("--device", help="Where to merge and verify: cpu | cuda | cuda:N | auto.")] = "cpu",
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Reload the result and compare probe logits with the source.")] = True,
    tolerance: Annotated[float | None, typer.Option(
        "--tolerance", help="Allowed max |logit diff| per unit of logit scale (default 1e-4 float32, 5e-3 half).")] = None,
    force: ForceOpt = False,
    *,
    show: OutputFlags,
) -> None:
    """Write a standalone checkpoint (original layout, sharded safetensors) from any loadable layout."""
    from rich.console import Console

    from libra_cli import convert as core

    err = Console(stderr=True, quiet=show.quiet or show.as_json)
    with err.status("converting ...") as status:
        res = core.convert(src, out, model_base=model_base, dtype=dtype, bundle_vision_tower=bundle_vision_tower,
                           max_shard_size=max_shard_size, force=force, verify=verify, vision_tower=vision_tower,
                           device=device, tolerance=tolerance, log=lambda m: status.update(m + " ..."))
    for note in res.notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False)
    if show.as_json:
        typer.echo(json.dumps(res.to_dict(), indent=2))
        return
    if show.quiet:
        typer.echo(res.out)
        return
    typer.echo(f"wrote {res.out}: {res.source_kind} -> standalone {res.dtype}, {res.num_tensors} tensors "
               f"({res.num_params / 1e6:.2f}M params), {len(res.shards)} shard(s), {res.total_bytes / 1e6:.1f} MB "
               f"in {res.seconds:.1f} s ({res.total_bytes / 1e6 / max(res.seconds, 1e-9):.1f} MB/s incl. verification)")
    typer.echo(f"vision tower: {res.vision_tower}{' (bundled)' if res.bundled_vision_tower else ''}")
    if res.verified:
        typer.echo(f"verified: probe logits max |diff| {res.max_abs_diff:.3g} "
                   f"(allowed {res.tolerance * res.logit_scale:.3g}); greedy tokens "
                   f"{'identical' if res.greedy_token_match else 'differ'}")
    else:
        typer.echo("not verified (--no-verify)")
    if res.dtype_drift is not None:
        typer.echo(f"{res.work_dtype} -> {res.dtype} moved the probe logits by up to {res.dtype_drift:.3g}")


def export_projector(
    src: Annotated[str, typer.Argument(help="Full checkpoint (folder or hub id), stage-1 folder, LoRA folder, "
                                             f"or a {files.PROJECTOR_FILE} / {files.NON_LORA_FILE} file.")],
    out: Annotated[str, typer.Option("--out", "-o", help=f"Output .bin file (keys {files.CONNECTOR_PREFIX}*).")] = files.PUBLISHED_PROJECTOR_FILE,
    dtype: Annotated[str, typer.Option("--dtype", help="auto (keep) | bfloat16 | float16 | float32.")] = "auto",
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the connector weights as a projector file, loadable as the pretrained projector of either stage."""
    from libra_cli import convert as core

    res = core.export_projector(src, out, dtype=dtype, force=force)
    if as_json:
        typer.echo(json.dumps(res.__dict__, indent=2))
        return
    checked = f"; fits the {res.connector} connector of its config" if res.checked_against_config else \
        "; no config.json next to the source, so not checked against a connector"
    typer.echo(f"wrote {res.out}: {res.num_tensors} tensors, {res.num_params:,} params, {res.dtype}, "
               f"from {res.source_kind} ({res.source_file}){checked}")
