#!/usr/bin/env bash
# Before a GPU run, on a machine that reaches the package registry: fetch the wheels that the
# GPU machine's image lacks (pyro-ppl, arviz, scikit-learn and what they need beyond the image's
# own packages) for its Python (3.12) into .whl/, and copy MNIST's four .gz files (and the
# statically binarized MNIST, when present) from $PYROVAE_DATA into .gpu-data/. Both folders
# are git-ignored; name them in the run's carry so that they travel with the working tree:
#
#   bash benchmarks/gpu_prepare.sh          # then, on the GPU machine: bash benchmarks/gpu.sh OUT
#
# Each wheel is pinned to the version this machine's Python has installed (the one the tests
# ran with), else the newest that fits. PYTHON picks the interpreter; GPU_PYTHON_VERSION the
# target (3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
target=${GPU_PYTHON_VERSION:-3.12}
data=${PYROVAE_DATA:-../shared/data}
if [ ! -f "$data/MNIST/raw/t10k-images-idx3-ubyte.gz" ]; then
  echo "gpu_prepare.sh: no MNIST files in $data/MNIST/raw; set PYROVAE_DATA to the folder that holds them" >&2
  exit 2
fi
# name, and the requirement when this machine has none installed (arviz: the 0.x API)
wanted="pyro-ppl:pyro-ppl>=1.9 pyro-api:pyro-api arviz:arviz<1 xarray-einstats:xarray-einstats
h5netcdf:h5netcdf platformdirs:platformdirs scikit-learn:scikit-learn>=1.8 joblib:joblib
threadpoolctl:threadpoolctl"
platforms=""
for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do platforms+=" --platform $p"; done
rm -rf .whl
mkdir -p .whl
for item in $wanted; do
  name=${item%%:*}
  version=$("$py" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
  spec=${version:+$name==$version}
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$target" --implementation cp \
    $platforms -d .whl "${spec:-${item#*:}}"
done
rm -rf .gpu-data
mkdir -p .gpu-data/MNIST/raw
cp "$data"/MNIST/raw/*.gz .gpu-data/MNIST/raw/
if [ -d "$data/BinarizedMNIST" ]; then
  cp -r "$data/BinarizedMNIST" .gpu-data/
fi
ls .whl
du -sh .whl .gpu-data
echo "carry: [\".whl\", \".gpu-data\"]; command: bash benchmarks/gpu.sh \$OUT"
