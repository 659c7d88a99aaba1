"""Lazy re-exports for package ``__init__`` files (PEP 562), so ``import libra_cli.x`` never pulls torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, table: dict[str, str], renamed: dict[str, str] | None = None
                 ) -> tuple[Callable[[str], Any], list[str]]:
    """``(__getattr__, __all__)`` for ``package``: each public name is imported from its module on first use.

    ``table`` maps a public name to the module defining it; ``renamed`` maps a public name to the
    module's own name for it where they differ.
    """
    renamed = renamed or {}

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module hook's name
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), renamed.get(name, name))

    return __getattr__, list(table)
