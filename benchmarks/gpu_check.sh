#!/usr/bin/env bash
# The gradient-step benchmark on a CUDA machine that already has JAX with CUDA:
#
#     benchmarks/gpu_check.sh [OUT_DIR]        # default OUT_DIR: benchmarks/results/gpu
#
# Installs each missing dependency of diffana (pyproject.toml) and what it needs, with JAX
# pinned to the installed version: from wheels in $WHEELS (default .whl, for machines
# without network) or else from PyPI; diffana itself is imported from this checkout. Then runs
# benchmarks/run.py (diffana's compiled engine against the hand-written JAX reference on the
# same GPU, same events) at 1 M, 10 M and 30 M events ($SIZES to change), and once more at
# $AWKWARD_EVENTS (default 200 k; empty to skip) with the awkward engine, which is CPU only,
# on this machine's CPU (JAX_PLATFORMS=cpu) beside the compiled engine on the GPU. Prints one
# JSON object: the runs, and the speedup of the GPU over the awkward engine.
# Nothing here is needed by CI. ALLOW_CPU=1 rehearses the whole script on a machine without
# a GPU (small SIZES, e.g. SIZES=100000 AWKWARD_EVENTS=20000).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/gpu}"
wheels="${WHEELS:-.whl}"
sizes="${SIZES:-1000000 10000000 30000000}"
awkward_events="${AWKWARD_EVENTS-200000}"
py="${PYTHON:-python3}"

ALLOW_CPU="${ALLOW_CPU:-}" "$py" - <<'PY' || { echo "gpu_check: JAX sees no GPU here" >&2; exit 2; }
import os, sys
import jax
if not (os.environ["ALLOW_CPU"] or any(d.platform == "gpu" for d in jax.devices())):
    sys.exit(1)
print("gpu_check: JAX", jax.__version__, "on", jax.devices()[0].device_kind, file=sys.stderr)
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
awkward=()
if [ -n "$awkward_events" ]; then
  echo "gpu_check: $awkward_events events, compiled engine here, awkward engine on the CPU" >&2
  "$py" benchmarks/run.py --events "$awkward_events" --repeat 5 --no-awkward --no-default \
    --json "$out/gpu_awkward_compiled.json" > /dev/null
  JAX_PLATFORMS=cpu "$py" benchmarks/run.py --events "$awkward_events" \
    --awkward-events "$awkward_events" --repeat 3 --no-default \
    --json "$out/cpu_awkward.json" > /dev/null
  awkward=("$out/gpu_awkward_compiled.json" "$out/cpu_awkward.json")
fi
"$py" - "${#results[@]}" "${results[@]}" "${awkward[@]}" <<'PY' | tee "$out/gpu_check.json"
import json, sys
n = int(sys.argv[1])
runs = [json.load(open(p)) for p in sys.argv[2:2 + n]]
out = {"runs": runs}
if len(sys.argv) > 2 + n:
    here, cpu = (json.load(open(p)) for p in sys.argv[2 + n:])
    out["awkward"] = {
        "events": cpu["awkward_events"],
        "awkward_step_s": cpu["awkward_step_s"], "awkward_device": cpu["device"],
        "compiled_step_s": here["diffana_step_s"],
        "compiled_device": f'{here["device"]} ({here.get("device_kind", "")})',
        "compiled_step_s_on_cpu": cpu["compiled_step_s_at_awkward_events"],
        "speedup_vs_awkward": cpu["awkward_step_s"] / here["diffana_step_s"],
    }
print(json.dumps(out, indent=1))
PY
