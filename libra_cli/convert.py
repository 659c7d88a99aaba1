"""Moving weights between layouts: standalone checkpoints (``convert``) and projector files (``export-projector``).

Users merge LoRA adapters, change dtypes, publish connector weights for a stage-2 start and run
offline. Everything here writes into a hidden temporary sibling of the output and moves it into
place only when complete (and, for checkpoints, verified), so an interrupted or failed run never
leaves a half-written checkpoint at the output path.
"""

from __future__ import annotations

import gc
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from libra_cli.atomic import atomic_output, check_output
from libra_cli.checkpoint import layout
from libra_cli.checkpoint.card import CardFacts, write_model_card
from libra_cli.checkpoint.hub import checkpoint_folder
from libra_cli.checkpoint.load import LoadedModel, check_projector_fits, load_model
from libra_cli.checkpoint.runtime import (
    DTYPES,
    checkpoint_bytes,
    dtype_name,
    parse_dtype,
    physical_memory,
    resolve_device,
    saved_dtype,
)
from libra_cli.checkpoint.tower import resolve_vision_tower_path, tower_folder, tower_name
from libra_cli.engines.hf import prepare_batch
from libra_cli.errors import InputError, LibraError, ModelLoadError
from libra_cli.requests import Sample

PROBE_POSITIONS = 32  # logits compared at the last N prompt positions (they depend on every earlier one)

Log = Callable[[str], None]


class VerificationError(LibraError):
    """The written checkpoint does not reproduce the source's logits (nothing was put in place)."""

    exit_code = 3


# ------------------------------------------------------------------ small parsers


def parse_size(text: str | int) -> int:
    """``5GB``, ``500MB``, ``200KiB``, ``1000`` -> bytes (decimal units as transformers; ``iB`` binary)."""
    if isinstance(text, int):
        if text <= 0:
            raise InputError(f"--max-shard-size must be positive, got {text}")
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*", str(text), flags=re.IGNORECASE)
    if not m:
        raise InputError(f"cannot read size {text!r}; use e.g. 5GB, 500MB or a number of bytes")
    num, unit = float(m.group(1)), m.group(2).lower().rstrip("b")
    base = 1024 if unit.endswith("i") else 1000
    power = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit.rstrip("i")]
    size = int(num * base**power)
    if size <= 0:
        raise InputError(f"--max-shard-size must be positive, got {text!r}")
    return size


# ------------------------------------------------------------------ export-projector

@dataclass
class ProjectorExport:
    """What ``export_projector`` wrote (for the CLI's report and --json)."""

    out: str
    source_kind: str
    source_file: str
    num_tensors: int
    num_params: int
    dtype: str
    connector: str | None
    checked_against_config: bool


def read_projector(src: str | Path) -> tuple[dict[str, torch.Tensor], str, str, Path | None]:
    """The connector's tensors from any layout that holds them.

    Returns (state, source kind, file read, folder with a config.json or None).
    Accepts a full checkpoint (folder or hub id), a stage-1 folder, a LoRA folder, or one of their
    connector files directly.
    """

    p = Path(str(src)).expanduser()
    if p.is_file():
        state = layout.strip_trainables_prefix(layout.load_bin(p))
        kind = "lora" if p.name == layout.NON_LORA_FILE else "projector-file"
        cfg_dir = p.parent if (p.parent / "config.json").is_file() else None
        return layout.only_connector(state, p), kind, str(p), cfg_dir
    folder = Path(checkpoint_folder(str(src), what="source"))
    kind = layout.folder_kind(folder)
    if kind == "full":
        state = layout.read_tensors(folder, layout.CONNECTOR_PREFIX)
        file = str(folder)
    elif kind == "projector":
        f = layout.projector_file(folder)
        state, file = layout.load_bin(f), str(f)
    else:  # lora
        f = layout.non_lora_file(folder)
        if not f.is_file():
            raise InputError(f"{folder} is a LoRA folder without {f.name}: it holds no connector "
                             "weights; export from its base model instead")
        state, file = layout.strip_trainables_prefix(layout.load_bin(f)), str(f)
    cfg_dir = folder if (folder / "config.json").is_file() else None
    return layout.only_connector(state, Path(file)), kind, file, cfg_dir


def export_projector(src: str | Path, out: str | Path, dtype: str | None = None, force: bool = False) -> ProjectorExport:
    """Write the connector weights of ``src`` to ``out`` as a torch state dict (the stage-1 file layout)."""
    out_path = check_output(out, force, is_dir=False, protect=(src,))
    state, kind, file, cfg_dir = read_projector(src)
    target = parse_dtype(dtype)
    if target:
        state = {k: (v.to(DTYPES[target]) if v.is_floating_point() else v) for k, v in state.items()}
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}

    connector = check_projector_fits(state, cfg_dir) if cfg_dir is not None else None
    with atomic_output(out_path, is_dir=False) as tmp:
        torch.save(state, tmp)
        back = torch.load(tmp, map_location="cpu", weights_only=True)  # the file must read back as written
        if set(back) != set(state) or any(not torch.equal(back[k], state[k]) for k in state):
            raise LibraError(f"{tmp} did not read back as written (disk problem?); nothing was written to {out_path}")
    dtypes = sorted({dtype_name(v.dtype) for v in state.values()})
    return ProjectorExport(out=str(out_path), source_kind=kind, source_file=file, num_tensors=len(state),
                           num_params=sum(v.numel() for v in state.values()), dtype="/".join(dtypes),
                           connector=connector, checked_against_config=connector is not None)


# ------------------------------------------------------------------ convert


@dataclass
class ConvertResult:
    """What ``convert`` wrote and how the verification went."""

    out: str
    source_kind: str
    dtype: str
    work_dtype: str
    num_tensors: int
    num_params: int
    shards: list[str]
    total_bytes: int
    vision_tower: str
    bundled_vision_tower: bool
    verified: bool
    max_abs_diff: float | None = None
    tolerance: float | None = None
    logit_scale: float | None = None
    dtype_drift: float | None = None
    greedy_token_match: bool | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _source_dtype(config_path: Path) -> str:
    """The dtype the source checkpoint was stored in (config ``torch_dtype``/``dtype``), float32 if unknown."""
    try:
        return saved_dtype(json.loads(config_path.read_text()))
    except (OSError, ValueError):
        return "float32"


def choose_work_dtype(target: str, stored: str, weights_bytes: int, device: str) -> str:
    """Merge/cast in float32 when it fits (exact LoRA merge, one rounding), else in the target dtype."""
    if target == "float32":
        return "float32"
    bytes_per = {"float32": 4, "bfloat16": 2, "float16": 2}[stored]
    fp32_bytes = weights_bytes * 4 // bytes_per
    if device == "cpu":
        mem = physical_memory()
        return "float32" if mem and fp32_bytes < 0.4 * mem else target
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        return "float32" if fp32_bytes < 0.5 * free else target
    return target


def default_tolerance(dtype: str) -> float:
    """Allowed |logit difference| per unit of logit scale between the source (cast) and the reloaded result.

    Both run the same weights in the same dtype, so any real difference is a write/read bug; the
    slack only covers kernel-order noise.
    """
    return 1e-4 if dtype == "float32" else 5e-3


def _probe_inputs(loaded: LoadedModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A deterministic probe: the model's own findings prompt over two seeded random 'images'."""
    h, w = loaded.image_processor.output_size
    rng = np.random.default_rng(1234)
    cur = rng.standard_normal((3, h, w)).astype(np.float32)
    prior = rng.standard_normal((3, h, w)).astype(np.float32)
    batch = prepare_batch(loaded, [Sample(current=cur, prior=prior)])
    return batch.input_ids, batch.attention_mask, batch.pixel_values


@torch.no_grad()
def probe_logits(loaded: LoadedModel) -> torch.Tensor:
    """Float32 logits of the probe at its last ``PROBE_POSITIONS`` positions, on the CPU."""
    ids, mask, pix = _probe_inputs(loaded)
    dev = loaded.model.get_input_embeddings().weight.device
    out = loaded.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), pixel_values=pix.to(dev), use_cache=False)
    return out.logits[:, -PROBE_POSITIONS:].float().cpu()


def _cast_like_reload(lm: Any, dtype: torch.dtype) -> None:
    """Cast to ``dtype`` as ``from_pretrained`` would load it: non-persistent buffers (rotary
    ``inv_freq``) are not in the file and stay as computed, so keep them as they are."""
    keep = [(m, name, buf) for m in lm.modules() for name, buf in m._buffers.items()
            if buf is not None and name in m._non_persistent_buffers_set]
    lm.to(dtype)
    for m, name, buf in keep:
        m._buffers[name] = buf


def _tokenizer_folder(src_folder: str, base_folder: str | None) -> Path | None:
    if layout.has_tokenizer(src_folder):
        return Path(src_folder)
    if base_folder and layout.has_tokenizer(base_folder):
        return Path(base_folder)
    return None


def _tower_reference(config: Any, src_folder: str, out: Path, override: str | None, bundle: bool,
                     notes: list[str]) -> tuple[str, Path | None]:
    """The ``mm_vision_tower`` value to write, and the local tower folder (None for a hub id)."""

    name = tower_name(config, override)
    if name.startswith("hf-hub:"):
        if bundle:
            raise InputError(f"cannot bundle the open_clip tower {name!r}; convert without --bundle-vision-tower")
        return name, None
    resolved = resolve_vision_tower_path(name, src_folder)
    local = Path(resolved) if Path(resolved).is_dir() else None
    if bundle:
        if local is None:
            local = tower_folder(resolved)
        return f"./{layout.BUNDLED_TOWER_DIR}", local
    if local is None:
        return name, None  # hub id: the converted checkpoint fetches it as the source did
    # a path: keep it if it still points at the same folder from the output, else make it absolute
    p = Path(name).expanduser()
    if not p.is_absolute():
        from_out = Path(os.path.normpath(out / p))
        if (from_out / "config.json").is_file() and from_out.resolve() == local.resolve():
            return name, local
        notes.append(f"mm_vision_tower {name!r} does not resolve from the output folder; wrote the absolute path "
                     f"{local} (use --bundle-vision-tower for a self-contained folder)")
        return str(local), local
    return name, local


def _write_config(tmp: Path, src_config: Path, target: str, tower_ref: str) -> None:
    """config.json as the source's, with the new dtype and tower, readable by transformers 4.x and 5."""
    d = json.loads((tmp / "config.json").read_text())
    try:
        orig = json.loads(src_config.read_text())
    except (OSError, ValueError):
        orig = {}
    if "use_cache" in orig:  # the loader turns the cache on; keep what the source said
        d["use_cache"] = orig["use_cache"]
    for k, v in orig.items():  # fields transformers 5 dropped stay as the source had them
        if k not in d and k not in ("transformers_version", "_name_or_path"):
            d[k] = v
    d["mm_vision_tower"] = tower_ref
    layout.write_config(tmp, d, dtype=target)


def _card(folder: Path, name: str, src: str, kind: str, model_base: str | None, dtype: str, verify: bool) -> None:
    """The converted folder's model card (what it came from; the reload check runs after this)."""

    made = f"`libra convert` of `{src}` ({kind}{' on ' + model_base if model_base else ''}) to a standalone {dtype} checkpoint"
    made += "; the written folder was reloaded and its logits checked against the source's." if verify else "."
    write_model_card(folder, CardFacts(title=name, kind="full", base_model=model_base or src, how_made=made))


def _say(log: Log | None, msg: str) -> None:
    if log is not None:
        log(msg)


def _verify(tmp: Path, out_path: Path, ref: torch.Tensor, target: str, dev: str, tolerance: float | None,
            result: ConvertResult) -> None:
    """Reload the written folder and compare its probe logits with the source's (``VerificationError`` if off)."""
    try:
        again = load_model(str(tmp), dtype=target, device=dev, attn="sdpa")
    except LibraError as exc:
        raise VerificationError(f"the converted checkpoint does not load ({exc}); nothing was written to "
                                f"{out_path}") from exc
    got = probe_logits(again)
    del again
    gc.collect()
    diff = float((got - ref).abs().max())
    scale = max(1.0, float(ref.abs().max()))
    tol = tolerance if tolerance is not None else default_tolerance(target)
    result.max_abs_diff, result.tolerance, result.logit_scale = diff, tol, scale
    result.greedy_token_match = bool(torch.equal(got.argmax(-1), ref.argmax(-1)))
    if not (diff <= tol * scale):
        raise VerificationError(
            f"verification failed: the converted checkpoint's probe logits differ from the source's by "
            f"{diff:.3g} (allowed {tol * scale:.3g}); nothing was written to {out_path} "
            "(rerun with --debug to investigate, or --no-verify to write it anyway)"
        )
    result.verified = True


def _source(src: str, model_base: str | None) -> tuple[str, str, str | None]:
    """(source folder, its kind, the base folder a LoRA / projector folder needs)."""

    src_folder = checkpoint_folder(src, what="model")
    kind = layout.folder_kind(src_folder)
    if kind != "full" and not model_base:
        raise InputError(f"{src} is a {kind} folder; pass --model-base with the base model it was trained on")
    if not (Path(src_folder) / "config.json").is_file():
        raise ModelLoadError(f"{src_folder} has no config.json; is this a Libra checkpoint folder?")
    base_folder = checkpoint_folder(model_base, what="base model") if (kind != "full" and model_base) else None
    return src_folder, kind, base_folder


def _reference(loaded: LoadedModel, work: str, target: str, verify: bool) -> tuple[torch.Tensor | None, float | None]:
    """Cast the source to the target dtype as a reload would; its probe logits (and the cast's drift) if verifying."""
    ref = probe_logits(loaded) if verify else None
    drift = None
    if work != target:
        _cast_like_reload(loaded.model, DTYPES[target])
        if verify:
            cast_ref = probe_logits(loaded)
            drift = float((cast_ref - ref).abs().max())
            ref = cast_ref
    return ref, drift


def _free(loaded: LoadedModel, dev: str) -> None:
    """Drop the source model before reloading: two copies of a 7B model do not fit a workstation."""
    loaded.model = None
    gc.collect()
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()


def convert(
    src: str,
    out: str | Path,
    model_base: str | None = None,
    dtype: str | None = None,
    bundle_vision_tower: bool = False,
    max_shard_size: str | int = "5GB",
    force: bool = False,
    verify: bool = True,
    vision_tower: str | None = None,
    device: str = "cpu",
    tolerance: float | None = None,
    log: Log | None = None,
) -> ConvertResult:
    """Any loadable layout (full, LoRA + base, projector-only + base) -> a standalone checkpoint.

    The result is written to a temporary sibling of ``out``, reloaded and checked against the
    source's probe logits, and only then moved to ``out``. Raises ``VerificationError`` (exit 3)
    when the logits differ beyond ``tolerance`` x logit scale; ``out`` is then left untouched.
    """
    t0 = time.perf_counter()
    shard_bytes = parse_size(max_shard_size)
    target_req = parse_dtype(dtype)
    dev = resolve_device(device)
    src_folder, kind, base_folder = _source(src, model_base)
    out_path = check_output(out, force, is_dir=True, protect=(src_folder, base_folder, vision_tower))
    weights_folder = Path(base_folder or src_folder)
    stored = _source_dtype(weights_folder / "config.json")
    target = target_req or _source_dtype(Path(src_folder) / "config.json")
    work = choose_work_dtype(target, stored, checkpoint_bytes(weights_folder), dev)
    notes: list[str] = []

    _say(log, f"loading {src} ({kind}{' + ' + str(model_base) if base_folder else ''}) in {work} on {dev}")
    loaded = load_model(src, model_base=model_base if kind != "full" else None, vision_tower=vision_tower,
                        dtype=work, device=dev, attn="sdpa")
    lm = loaded.model
    leftover = [k for k in lm.state_dict() if "lora_" in k or "base_layer" in k]
    if leftover:
        raise LibraError(f"the LoRA adapter was not fully merged ({leftover[0]}); cannot write a standalone checkpoint")
    tower_ref, tower_folder = _tower_reference(lm.config, src_folder, out_path, vision_tower, bundle_vision_tower, notes)

    if verify:
        _say(log, "computing the probe logits of the source")
    ref, drift = _reference(loaded, work, target, verify)
    tok_src = _tokenizer_folder(src_folder, base_folder)
    with atomic_output(out_path, is_dir=True) as tmp:
        _say(log, f"writing {target} safetensors (shards up to {shard_bytes} bytes)")
        lm.save_pretrained(tmp, max_shard_size=shard_bytes)
        layout.remove_adapter_files(tmp)
        _write_config(tmp, Path(src_folder) / "config.json", target, tower_ref)
        copied = layout.copy_tokenizer_files(tok_src, tmp)
        if not copied:
            notes.append("no tokenizer files found in the source or base folder; the output has none")
        _card(tmp, out_path.name, src, kind, model_base, target, verify)
        if bundle_vision_tower and tower_folder is not None:
            _say(log, f"bundling the vision tower from {tower_folder}")
            layout.bundle_tower(tower_folder, tmp / layout.BUNDLED_TOWER_DIR)
        num_params = sum(p.numel() for p in layout.without_tower(lm.state_dict()).values())
        del lm
        _free(loaded, dev)
        del loaded

        result = ConvertResult(
            out=str(out_path), source_kind=kind, dtype=target, work_dtype=work, num_tensors=0, num_params=num_params,
            shards=layout.weight_shards(tmp), total_bytes=sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()),
            vision_tower=tower_ref, bundled_vision_tower=bool(bundle_vision_tower and tower_folder is not None),
            verified=False, dtype_drift=drift, notes=notes,
        )
        result.num_tensors = len(layout.checkpoint_keys(tmp))
        if verify and ref is not None:
            _say(log, "reloading the result and comparing probe logits")
            _verify(tmp, out_path, ref, target, dev, tolerance, result)
        result.seconds = time.perf_counter() - t0
    # paths inside the report name the final folder
    return result
