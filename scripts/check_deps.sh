#!/usr/bin/env bash
# Are the ranges in pyproject.toml honest? Build a fresh venv with the OLDEST (every direct dependency at its lower
# bound, the rest resolved by pip: uv's "lowest-direct") or the NEWEST versions they allow, run the exactness tests
# (fixture parity, prompts, images, backbones, CCD, the metric adapters against their packages) and record what was
# installed in requirements/tested-MODE.txt. Results go in docs/dependencies.md's table.
#   scripts/check_deps.sh oldest|newest [VENV_DIR]        (about 10-20 min each on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
case "$MODE" in oldest|newest) ;; *) echo "usage: scripts/check_deps.sh oldest|newest [VENV_DIR]" >&2; exit 2 ;; esac
VENV=${2:-/tmp/libra-deps-$MODE}
EXTRAS=dev,metrics-model,quant,deepspeed,pacs
rm -rf "$VENV"
python3 -m venv "$VENV"
unset VIRTUAL_ENV
export LIBRA_UNLOCKED=1 PYTHON="$VENV/bin/python" PIP_DISABLE_PIP_VERSION_CHECK=1
if [ "$MODE" = oldest ]; then
  # pip cannot resolve "lowest": uv's lowest-direct puts every direct dependency at the lowest version that resolves
  # with all the others (e.g. numpy at 2.0.0 when an extra needs numpy 2). torch's lowest comes from PyPI: a CUDA
  # build (several GB; it runs on a CPU).
  "$VENV/bin/python" -m pip install -q uv
  "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --resolution lowest-direct -e ".[$EXTRAS]"
  "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --no-deps medspacy==1.3.1 PyRuSH==1.0.13
  "$VENV/bin/python" -m libra_cli.metrics.nltk_data
else
  bash scripts/install.sh
fi
"$VENV/bin/python" scripts/deps.py freeze "requirements/tested-$MODE.txt"
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_fixture_parity.py tests/test_prompts.py tests/test_images.py tests/test_loading.py tests/test_backbones.py \
  tests/test_ccd.py tests/test_metrics_reference.py tests/test_eval_metrics.py tests/test_data_reference.py \
  | tee "$VENV/pytest.log"
echo "$MODE: the exactness tests passed; installed versions in requirements/tested-$MODE.txt" >&2
