#!/usr/bin/env bash
# The YAML run: validate the default configuration, then optimise it for a few steps.
#   bash examples/yaml_run.sh [OUT_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-runs/example}"
diffana validate "$here/configs/ttbar_vs_wjets.yaml"
diffana run "$here/configs/ttbar_vs_wjets.yaml" --steps 10 --out "$out"
ls "$out"
