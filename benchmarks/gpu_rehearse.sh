#!/usr/bin/env bash
# Rehearse the GPU run on this machine, as the GPU machine will run it: a copy of the working
# tree with .whl/ and .gpu-data/ (run benchmarks/gpu_prepare.sh first), a fresh environment of
# Python 3.12 holding only what the GPU image holds (its torch 2.11 and torchvision 0.26, numpy,
# scipy, matplotlib, pandas, xarray, h5py, tqdm, pillow, pytest, hypothesis, setuptools: no
# pyro-ppl, no arviz), no PYROVAE_DATA; then `bash benchmarks/gpu.sh OUT --dry` there, and with
# --suite the whole test suite too.
#
#   bash benchmarks/gpu_rehearse.sh [--suite]      # PYTHON312 picks the interpreter (python3.12)
#
# The environment (about 6 GB, the registry's CUDA build of torch) is kept in .cache/gpu-rehearsal.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
py312=${PYTHON312:-python3.12}
env=$root/.cache/gpu-rehearsal/venv
copy=$(mktemp -d)/repo
if [ ! -d .whl ] || [ ! -d .gpu-data ]; then
  echo "gpu_rehearse.sh: no .whl/ or .gpu-data/; run bash benchmarks/gpu_prepare.sh first" >&2
  exit 2
fi
if [ ! -x "$env/bin/python" ]; then
  "$py312" -m venv "$env"
  "$env/bin/pip" install -q torch==2.11.0 torchvision==0.26.0 numpy scipy matplotlib pandas xarray \
    h5py tqdm pillow pytest hypothesis "setuptools>=70" opt-einsum
fi
mkdir -p "$copy"
git ls-files -co --exclude-standard | tar cf - -T - | tar xf - -C "$copy"
cp -r .whl .gpu-data "$copy/"
"$env/bin/pip" uninstall -q -y pyrovae 2>/dev/null || true
site=$(dirname "$copy")/site
cd "$copy"
run() { env -u PYROVAE_DATA -u VIRTUAL_ENV -u PYTHONPATH PATH="$env/bin:/usr/bin:/bin" PYROVAE_GPU_SITE="$site" "$@"; }
run PYTHON=python3 bash benchmarks/gpu.sh "$copy/../out" --dry
if [ "${1:-}" = "--suite" ]; then
  # test_gpu_script runs the dry run itself; a file that imports what the image lacks is named
  run PYTHONPATH="$site" PYROVAE_DATA="$copy/.gpu-data" MPLBACKEND=Agg python3 -m pytest -q \
    -p no:cacheprovider --continue-on-collection-errors --deselect tests/test_gpu_script.py
fi
echo "gpu_rehearse.sh: the dry run's files are in $copy/../out"
