"""Benchmarks (``python benchmarks/NAME.py``); a package so that ``benchmarks.x`` never resolves to a dependency's own top-level ``benchmarks`` (pysbd installs one)."""
