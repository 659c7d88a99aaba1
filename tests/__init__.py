"""libra test suite (a package, so ``tests.conftest`` is this folder even when an installed
distribution such as radgraph or f1chexbert ships a top-level ``tests`` package)."""
