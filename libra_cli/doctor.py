"""``libra doctor``: what this machine can do, and for every problem the exact command that fixes it.

Versions are read from package metadata (nothing heavy is imported except torch, for the GPUs), so the
report works on a half-broken install too; it is what users paste into bug reports (``--json``).
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any

CORE = ("torch", "transformers", "peft", "accelerate", "datasets", "huggingface-hub", "safetensors", "tokenizers",
        "sentencepiece", "typer", "rich", "pillow", "pydicom", "numpy")
OPTIONAL = {  # package -> (what it enables, how to get it)
    "nltk": ("METEOR", "pip install 'libra-cli[metrics]'"),
    "sacrebleu": ("BLEU", "pip install 'libra-cli[metrics]'"),
    "gradio": ("libra serve", "pip install 'libra-cli[serve]'"),
    "tensorboard": ("training logs (report_to: tensorboard)", "pip install 'libra-cli[train]'"),
    "bert-score": ("BERTScore", "pip install 'libra-cli[metrics-model]'"),
    "radgraph": ("RadGraph, RG_ER", "pip install 'libra-cli[metrics-model]'"),
    "f1chexbert": ("CheXbert F1", "pip install 'libra-cli[metrics-model]'"),
    "flash-attn": ("--attn flash_attention_2 (CUDA)", "pip install flash-attn --no-build-isolation (needs nvcc)"),
    "bitsandbytes": ("--load-4bit / --load-8bit (CUDA)", "pip install 'libra-cli[quant]'"),
    "deepspeed": ("--distributed zero2/zero3", "pip install 'libra-cli[deepspeed]'"),
    "vllm": ("--engine vllm", "pip install 'libra-cli[vllm]'"),
    "open-clip-torch": ("BiomedCLIP towers (LLaVA-Rad)", "pip install 'libra-cli[openclip]'"),
}


@dataclass
class Report:
    """Everything ``libra doctor`` found; ``problems`` pairs each issue with the command that fixes it."""

    system: dict[str, Any] = field(default_factory=dict)
    packages: dict[str, str | None] = field(default_factory=dict)
    optional: dict[str, str | None] = field(default_factory=dict)
    devices: list[dict[str, Any]] = field(default_factory=list)
    hub: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["problems"] = [{"problem": p, "fix": f} for p, f in self.problems]
        return d


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _devices(report: Report) -> None:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken torch is exactly what doctor must report
        report.problems.append((f"torch does not import ({exc})", "bash scripts/install.sh (or pip install torch)"))
        return
    report.system["cuda"] = torch.version.cuda
    report.system["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            report.devices.append({"device": f"cuda:{i}", "name": p.name, "memory_gb": round(total / 2**30, 1),
                                   "free_gb": round(free / 2**30, 1), "capability": f"{p.major}.{p.minor}",
                                   "bf16": bool(torch.cuda.is_bf16_supported())})
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        report.devices.append({"device": "mps", "name": "Apple GPU"})
    report.devices.append({"device": "cpu", "name": platform.processor() or platform.machine(),
                           "cores": os.cpu_count()})
    if not any(d["device"].startswith("cuda") for d in report.devices):
        report.problems.append(("no CUDA GPU: a 7B model generates slowly on the CPU (libra demo still runs)",
                                "run on a GPU machine; install torch for CUDA there: LIBRA_TORCH=torch bash scripts/install.sh"))


def _hub(report: Report) -> None:
    from libra_cli.checkpoint import hub
    from libra_cli.checkpoint.registry import KNOWN_MODELS

    offline = hub.offline()
    cache_path = hub.cache_dir()
    report.hub.update(offline=offline, cache=str(cache_path), endpoint=hub.endpoint())
    cached: dict[str, int] = {}
    try:
        cached = hub.cached_repos(cache_path)
    except Exception as exc:  # noqa: BLE001 - a damaged cache is reported, not fatal
        report.problems.append((f"cannot read the Hugging Face cache at {cache_path} ({exc})",
                                f"hf cache scan (or remove {cache_path})"))
    report.hub["cached"] = {k: round(v / 1e9, 2) for k, v in sorted(cached.items())}
    report.hub["published_models_cached"] = [m.hub_id for m in KNOWN_MODELS.values() if m.hub_id in cached]
    existing = next((p for p in (cache_path, *cache_path.parents) if p.exists()), None)
    if existing is not None:
        report.hub["free_disk_gb"] = round(shutil.disk_usage(existing).free / 1e9, 1)
    if offline and not report.hub["published_models_cached"]:
        report.problems.append(("HF_HUB_OFFLINE is set and no published Libra model is cached",
                                "libra download X-iZhang/libra-v1.0-7b (on a machine with network, same HF_HOME)"))


def _data(report: Report) -> None:
    from libra_cli.demo import DEMO_MODEL

    report.data["demo_model"] = str(DEMO_MODEL) if (DEMO_MODEL / "config.json").is_file() else None
    if report.data["demo_model"] is None:
        report.problems.append(("the bundled demo model is missing", "pip install --force-reinstall libra-cli"))
    try:
        from libra_cli.metrics.nltk_data import find_installed

        found = find_installed()
        report.data["nltk"] = {k: str(v) if v else None for k, v in found.items()}
        if not all(found.values()):
            report.problems.append(("NLTK data for METEOR is missing (" + ", ".join(k for k, v in found.items() if not v)
                                    + ")", "python -m libra_cli.metrics.nltk_data"))
    except ImportError:
        report.data["nltk"] = None


def diagnose() -> Report:
    """Collect the report (no network access: offline and cache state are read, never probed)."""
    from libra_cli import __version__

    report = Report()
    report.system = {"libra": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
                     "executable": sys.executable}
    report.packages = {name: _version(name) for name in CORE}
    for name, v in report.packages.items():
        if v is None:
            report.problems.append((f"core package {name} is not installed", "bash scripts/install.sh"))
    report.optional = {name: _version(name) for name in OPTIONAL}
    if report.optional.get("flash-attn") and importlib.util.find_spec("flash_attn") is None:
        report.problems.append(("flash-attn is installed but does not import", "pip install --force-reinstall flash-attn"))
    tf = report.packages.get("transformers")
    if tf and int(tf.split(".")[0]) < 5:
        report.problems.append((f"transformers {tf} is too old (libra needs 5.x)", "pip install 'transformers>=5,<6'"))
    _devices(report)
    _hub(report)
    _data(report)
    return report


def memory_report(model: str, dtype: str = "auto", device: str = "auto", num_beams: int = 1, batch_size: int = 1,
                  max_new_tokens: int = 512) -> dict[str, Any]:
    """What loading ``model`` and generating would need, per dtype, against the free memory (nothing is loaded)."""
    from libra_cli.checkpoint import memory
    from libra_cli.checkpoint.hub import checkpoint_folder
    from libra_cli.checkpoint.load import read_config
    from libra_cli.checkpoint.runtime import resolve_device, saved_dtype

    dev = resolve_device(device)
    folder = checkpoint_folder(model, what="model")
    config = read_config(folder)
    work = memory.Workload(batch_size=batch_size, num_beams=num_beams, max_new_tokens=max_new_tokens)
    files = memory.weight_files(folder, saved_dtype(config))
    chosen = memory.choose_dtype(dtype, dev, config, folder, work, weights=files)
    rows = {}
    for name in dict.fromkeys([chosen, "bfloat16", "float32"]):
        rows[name] = memory.inference_estimate(folder, config, name, dev, work, weights=files, what=model).to_dict()
    if dev.startswith("cuda"):
        rows["4bit"] = memory.inference_estimate(folder, config, "bfloat16", dev, work, quant="4bit", weights=files,
                                                 what=model).to_dict()
    return {"model": model, "folder": str(folder), "device": dev, "stored_dtype": saved_dtype(config),
            "parameters": files.params, "stored_gb": round(files.stored_bytes / 1e9, 2), "auto_dtype": chosen,
            "cpu_bf16_native": memory.cpu_bf16_native(), "workload": work.__dict__, "estimates": rows}
