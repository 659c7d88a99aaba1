"""Model cards: the ``README.md`` that makes a trained or converted folder publishable on the hub.

The card states what the folder is (kind, base, connector, encoder), how it was made (recipe, data,
validation metrics or conversion check), how to run it with libra, and the research-use notice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NOTICE = ("Research use only. Not a medical device and not for clinical decisions: generated reports can be wrong "
          "or miss findings, and a radiologist must review every one.")


@dataclass
class CardFacts:
    """What the card says; everything optional except the folder's own config."""

    title: str
    kind: str  # full | lora | projector
    base_model: str | None = None
    how_made: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    license: str = "other"


def _yaml_header(f: CardFacts, config: dict[str, Any]) -> str:
    lines = ["---", f"license: {f.license}", "library_name: libra-cli", "pipeline_tag: image-text-to-text",
             "tags:", "- radiology", "- chest-x-ray", "- report-generation", "- libra", "- medical"]
    if f.base_model:
        lines.append(f"base_model: {f.base_model}")
    if f.metrics:
        lines += ["model-index:", f"- name: {json.dumps(f.title)}", "  results:", "  - task:",
                  "      type: image-text-to-text", "    metrics:"]
        lines += [f"    - type: {json.dumps(k)}\n      value: {v:.4g}" for k, v in f.metrics.items()]
    lines.append("---")
    return "\n".join(lines)


def _usage(f: CardFacts, repo: str) -> str:
    base = f" --model-base {f.base_model}" if f.kind != "full" and f.base_model else ""
    return (f"```bash\npip install libra-cli\nlibra infer --model {repo}{base} current.jpg prior.jpg\n"
            f"libra batch --model {repo}{base} questions.jsonl --out answers.jsonl\n```")


def render(f: CardFacts, config: dict[str, Any], repo: str = "PATH_OR_REPO") -> str:
    """The card's markdown for a folder whose ``config.json`` is ``config``."""
    arch = (f"{config.get('model_type', '?')} LLM ({config.get('num_hidden_layers', '?')} layers, hidden "
            f"{config.get('hidden_size', '?')}), connector {config.get('mm_projector_type', '?')}, "
            f"vision tower {config.get('mm_vision_tower', '?')}")
    parts = [_yaml_header(f, config), f"# {f.title}", f"> **{NOTICE}**", "## What this is",
             f"A Libra-format checkpoint ({f.kind}{' on ' + f.base_model if f.base_model and f.kind != 'full' else ''}): "
             f"{arch}. It writes the Findings section of a chest X-ray report from the current image, compared "
             "with the patient's prior image (Libra, ACL 2025).", "## How to use", _usage(f, repo)]
    if f.how_made:
        parts += ["## How it was made", f.how_made]
    if f.recipe:
        keys = ("model_name_or_path", "vision_tower", "mm_projector_type", "conv_mode", "dtype", "learning_rate",
                "num_train_epochs", "max_steps", "global_batch_size", "lora_enable", "lora_r", "lora_alpha",
                "freeze_mm_mlp_adapter", "model_max_length", "seed")
        rows = [f"| {k} | {f.recipe[k]} |" for k in keys if k in f.recipe]
        parts += ["### Training recipe", "| setting | value |", "|---|---|", *rows,
                  "The full resolved recipe is `recipe.yaml` in this folder."]
    if f.data:
        parts += ["### Data", "\n".join(f"- {k}: {v}" for k, v in f.data.items())]
    if f.metrics:
        parts += ["## Evaluation", "| metric | value |", "|---|---|",
                  *[f"| {k} | {v:.4g} |" for k, v in f.metrics.items()]]
    if f.extra:
        parts += ["## Details", "\n".join(f"- {k}: {v}" for k, v in f.extra.items())]
    parts += ["## Intended use and limitations",
              "For research on radiology report generation. The model was not validated for clinical use, can "
              "hallucinate findings or miss them, reflects the biases of its training data (e.g. MIMIC-CXR), and "
              "expects frontal chest X-rays.", f"_{NOTICE}_"]
    return "\n\n".join(parts) + "\n"


def write_model_card(folder: str | Path, facts: CardFacts, repo: str | None = None) -> Path:
    """Write ``README.md`` into ``folder`` (which holds ``config.json``); ``repo`` names it in the usage lines."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    path = folder / "README.md"
    path.write_text(render(facts, config, repo=repo or facts.title), encoding="utf-8")
    return path
