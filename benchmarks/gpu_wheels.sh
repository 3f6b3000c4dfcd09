#!/usr/bin/env bash
# Wheels for benchmarks/gpu_check.sh on a GPU machine that has no network:
#
#     benchmarks/gpu_wheels.sh [DIR]       # default DIR: .whl (ignored by git)
#
# Downloads, for CPython $PY_VERSION (default 3.12) on manylinux x86_64, the wheels of
# diffana's dependencies (pyproject.toml) and of what they need, then keeps only those a
# machine with JAX and the scientific Python stack lacks: the packages in $PRESENT (the
# large ones such a machine has; pip there uses its own copies) are left out. Carry DIR to
# the machine and run `WHEELS=DIR benchmarks/gpu_check.sh` there.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.whl}"
py_version="${PY_VERSION:-3.12}"
py="${PYTHON:-python3}"
# what the GPU image holds already (its package list, 2026-11), and large
PRESENT="${PRESENT:-jax jaxlib jax-cuda13-pjrt jax-cuda13-plugin ml-dtypes opt-einsum numpy scipy
  matplotlib pillow fonttools contourpy kiwisolver cycler pyparsing python-dateutil six packaging
  optax chex absl-py toolz optimistix lineax equinox jaxtyping wadler-lindig typing-extensions
  pyyaml tqdm fsspec xxhash attrs click}"

deps=$("$py" - <<'PY'
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
PY
)
all=$(mktemp -d)
trap 'rm -rf "$all"' EXIT
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
# shellcheck disable=SC2086
"$py" -m pip download -q --only-binary=:all: --python-version "$py_version" \
  --implementation cp "${platforms[@]}" -d "$all" $(echo "$deps" | tr '\n' ' ')
mkdir -p "$dir"
"$py" - "$all" "$dir" $PRESENT <<'PY'
import re, shutil, sys
from pathlib import Path

src, dst, present = Path(sys.argv[1]), Path(sys.argv[2]), set(sys.argv[3:])
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
present = {norm(p) for p in present}
kept = 0
for wheel in sorted(src.glob("*.whl")):
    name = norm(wheel.name.split("-")[0])
    if name not in present:
        shutil.copy(wheel, dst / wheel.name)
        kept += wheel.stat().st_size
        print(f"gpu_wheels: {wheel.name}", file=sys.stderr)
print(f"gpu_wheels: {kept / 2**20:.1f} MiB in {dst}", file=sys.stderr)
PY
