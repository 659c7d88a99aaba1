"""libra: temporal chest X-ray report generation (Libra) on today's stack.

The Python API is what the CLI and the web UI call; heavy modules (torch, transformers)
are imported lazily so that ``import libra_cli`` and ``libra --help`` stay fast.
"""

from __future__ import annotations

from libra_cli.lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it (resolved on first access)
_LAZY = {
    "LibraError": "libra_cli.errors",
    "load_model": "libra_cli.checkpoint.load",
    "LoadedModel": "libra_cli.checkpoint.load",
    "generate_report": "libra_cli.generation",
    "generate": "libra_cli.generation",
    "Sample": "libra_cli.requests",
    "GenerationSettings": "libra_cli.requests",
    "CCDSettings": "libra_cli.requests",
    "ModelSpec": "libra_cli.requests",
    "Report": "libra_cli.requests",
    "load_image": "libra_cli.images",
    "get_template": "libra_cli.prompts",
    "build_prompt": "libra_cli.prompts",
}

__getattr__, _names = lazy_exports(__name__, _LAZY)
__all__ = ["__version__", *_names]
