#!/usr/bin/env bash
# The GPU programme in one command (benchmarks/gpu.py; its docstring lists the stages).
# On a bare GPU machine it first installs what benchmarks/gpu_prepare.sh carried: the wheels in
# .whl/ into a target folder put on PYTHONPATH, this project with `pip install --no-deps -e .`
# (so it runs on the image's own torch), and MNIST from .gpu-data/ as the data root.
#
#   bash benchmarks/gpu.sh OUT [--dry] [--only STAGE ...] [--budget STAGE=SECONDS ...]
#
# Writes OUT/gpu.md (the short table, also printed last), OUT/tables.md, OUT/gpu.log and
# OUT/gpu.json; runs and checkpoints go to OUT-work beside OUT. PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [[ $1 == -* ]]; then
  echo "usage: bash benchmarks/gpu.sh OUT [--dry] [options of benchmarks/gpu.py]" >&2
  exit 2
fi
py=${PYTHON:-python3}
site=${PYROVAE_GPU_SITE:-/tmp/pyrovae-site}
start=$(date +%s)
if ! "$py" -c "import pyro, arviz, sklearn" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "gpu.sh: pyro-ppl, arviz or scikit-learn is missing and .whl/ holds no wheels; run" \
      "bash benchmarks/gpu_prepare.sh on a machine with the package registry first" >&2
    exit 2
  fi
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! (cd / && "$py" -c "import pyrovae.models") 2>/dev/null; then
  # --no-build-isolation: the image's setuptools builds it (no registry to fetch one from);
  # --no-deps: the image's torch stays, whatever pyproject.toml asks of a fresh install
  # an image whose setuptools predates editable installs (PEP 660, setuptools 64) gets a plain one
  "$py" -m pip install -q --no-index --no-deps --no-build-isolation -e . ||
    "$py" -m pip install -q --no-index --no-deps --no-build-isolation .
fi
if [ -z "${PYROVAE_DATA:-}" ] && [ -d .gpu-data ]; then
  export PYROVAE_DATA="$PWD/.gpu-data"
fi
echo "gpu.sh: set up in $(($(date +%s) - start)) s; data root ${PYROVAE_DATA:-./data}"
exec "$py" benchmarks/gpu.py "$@"
