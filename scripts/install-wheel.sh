#!/usr/bin/env bash
# Install pinrec's wheel and its runtime dependencies, at the versions of requirements.lock, into a Python
# environment. The image (Dockerfile) and the packaging test (tests/test_wheel.py) both run this script, so
# the test exercises what the image installs.
#
#   scripts/install-wheel.sh PYTHON WHEEL [TORCH_INDEX_URL]
#
# PYTHON: the environment's interpreter. TORCH_INDEX_URL: take torch (same version) from this index first,
# e.g. PyTorch's CPU-only wheels for the image; the lock's torch carries CUDA libraries.
# The uv binary is $UV (default: uv on PATH).
set -euo pipefail
if (($# < 2)); then
  echo "usage: $0 PYTHON WHEEL [TORCH_INDEX_URL]" >&2
  exit 2
fi
python=$1
wheel=$2
torch_index=${3:-}
uv=${UV:-uv}
lock="$(cd "$(dirname "$0")/.." && pwd)/requirements.lock"

if [[ -n $torch_index ]]; then
  torch_version=$(sed -n 's/^torch==//p' "$lock")
  [[ -n $torch_version ]] || { echo "no torch pin in $lock" >&2; exit 1; }
  "$uv" pip install --python "$python" --no-deps --index-url "$torch_index" "torch==$torch_version"
fi
# The wheel's own dependencies (no dev tools), each held to its locked version.
"$uv" pip install --python "$python" --constraint "$lock" "$wheel"
