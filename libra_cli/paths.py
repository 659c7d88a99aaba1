"""Files shipped inside the package: the example X-rays and the tiny demo model (``--model demo``)."""

from __future__ import annotations

from pathlib import Path

RESOURCES = Path(__file__).resolve().parent / "resources"
EXAMPLES = RESOURCES / "examples"
EXAMPLE_CURRENT, EXAMPLE_PRIOR = EXAMPLES / "current.jpg", EXAMPLES / "prior.jpg"
DEMO_MODEL = RESOURCES / "demo" / "model"
ALIASES = {"demo": DEMO_MODEL}  # model names that mean a shipped folder
