#!/usr/bin/env bash
# One-command install for a fresh machine (the README's install step).
# CPU machines: torch 2.13.0 is pinned first so pip takes the local CPU build instead of a multi-GB CUDA wheel.
# GPU machines: set LIBRA_TORCH="torch" (or your CUDA build) to skip the CPU pin.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q ${LIBRA_TORCH:-torch==2.13.0}
$PY -m pip install -q -e ".[dev]"
