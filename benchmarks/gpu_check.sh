#!/usr/bin/env bash
# The gradient-step benchmark on a CUDA machine that already has JAX with CUDA:
#
#     benchmarks/gpu_check.sh [OUT_DIR]        # default OUT_DIR: benchmarks/results/gpu
#
# Installs each missing dependency of diffana (pyproject.toml) and what it needs, with JAX
# pinned to the installed version: from wheels in $WHEELS (default .whl, for machines
# without network) or else from PyPI; diffana itself is imported from this checkout. Then runs benchmarks/run.py (diffana's compiled engine against
# the hand-written JAX reference on the same GPU, same events) at 1 M, 10 M and 30 M events
# ($SIZES to change), and prints one JSON list of the results. Nothing here is needed by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/gpu}"
wheels="${WHEELS:-.whl}"
sizes="${SIZES:-1000000 10000000 30000000}"
py="${PYTHON:-python3}"

"$py" - 2>/dev/null <<'PY' || { echo "gpu_check: JAX sees no GPU here" >&2; exit 2; }
import jax
assert any(d.platform == "gpu" for d in jax.devices()), jax.devices()
print("JAX", jax.__version__, "on", jax.devices()[0].device_kind)
PY

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # diffana itself, from this checkout
constraints=$(mktemp)
"$py" - > "$constraints" <<'PY'
from importlib.metadata import PackageNotFoundError, version
for name in ("jax", "jaxlib"):  # keep the machine's CUDA build of JAX as it is
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        pass
PY
pip_install() {  # the given requirements and what they need, JAX pinned as installed
  if [ -d "$wheels" ]; then
    "$py" -m pip install -q --no-index --find-links "$wheels" -c "$constraints" "$@"
  else
    "$py" -m pip install -q -c "$constraints" "$@"
  fi
}
missing=$("$py" - <<'PY'
import importlib.util, re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
modules = {"pyyaml": "yaml", "jax": None}  # JAX is the machine's own
out = []
for d in deps:
    name = re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower()
    module = modules.get(name, name)
    if module and importlib.util.find_spec(module) is None:
        out.append(d)
print(" ".join(out))
PY
)
if [ -n "$missing" ]; then
  echo "gpu_check: installing $missing" >&2
  pip_install $missing
fi

mkdir -p "$out"
results=()
for n in $sizes; do
  echo "gpu_check: $n events" >&2
  "$py" benchmarks/run.py --events "$n" --repeat 5 --no-awkward --no-default \
    --json "$out/gpu_$n.json" > /dev/null
  results+=("$out/gpu_$n.json")
done
"$py" - "${results[@]}" <<'PY'
import json, sys
print(json.dumps([json.load(open(p)) for p in sys.argv[1:]], indent=1))
PY
