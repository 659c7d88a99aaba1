"""The demo that works out of the box: a tiny model and two example X-rays shipped inside the package.

A first user sees the whole path (images -> encoder -> TAC -> LLM -> text) run offline in seconds,
and downstream CI has something small to call. The model is 1.5 MB and cannot read X-rays: its
text is labelled as such everywhere it is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libra_cli.errors import ModelLoadError
from libra_cli.paths import DEMO_MODEL
from libra_cli.paths import EXAMPLE_CURRENT as CURRENT
from libra_cli.paths import EXAMPLE_PRIOR as PRIOR

NOTICE = ("demo model: 1.5 MB, trained briefly on synthetic report sentences; it cannot read X-rays, so this "
          "text does not describe the images")
REAL_MODELS = ("real models: libra infer --model X-iZhang/libra-v1.0-7b CURRENT PRIOR "
               "(or libra-v1.0-3b; prefetch the model and its RAD-DINO encoder with: libra download X-iZhang/libra-v1.0-7b)")


@dataclass
class DemoResult:
    """What ``libra demo`` ran and wrote."""

    text: str
    model: str
    current: str
    prior: str
    notice: str
    load_s: float
    generate_s: float
    new_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def demo_model_path() -> Path:
    """The bundled demo checkpoint (a full Libra folder with its encoder in ``vision_tower/``)."""
    if not (DEMO_MODEL / "config.json").is_file():
        raise ModelLoadError(f"the demo model is missing from {DEMO_MODEL}; reinstall libra-cli")
    return DEMO_MODEL


def run_demo(max_new_tokens: int = 48, streamer: Any = None) -> DemoResult:
    """Findings for the bundled example pair from the bundled demo model (CPU, float32, greedy)."""
    from libra_cli.checkpoint.load import load_model
    from libra_cli.generation import GenerationSettings, generate_report

    loaded = load_model(str(demo_model_path()), device="cpu", dtype="float32")
    report = generate_report(loaded, str(CURRENT), str(PRIOR), settings=GenerationSettings(max_new_tokens=max_new_tokens),
                             streamer=streamer)
    t = report.timings
    return DemoResult(report.text, str(DEMO_MODEL), str(CURRENT), str(PRIOR), NOTICE, loaded.load_seconds,
                      t["generate_s"], int(t["new_tokens"]))
