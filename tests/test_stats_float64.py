"""Importing diffana.stats alone gives float64 likelihoods equal to pyhf's.

float64 is switched on once, in ``diffana/__init__.py``; ``diffana.stats`` must not depend on
``diffana.analysis`` (or a test's conftest) having done it. A fresh interpreter checks this.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT

SCRIPT = """
import json, sys
import jax
before = bool(jax.config.jax_enable_x64)
from diffana.stats import Model
import numpy as np
import pyhf

spec = {"channels": [{"name": "SR", "samples": [
    {"name": "signal", "data": [5.0, 2.5, 0.3],
     "modifiers": [{"name": "mu", "type": "normfactor", "data": None},
                   {"name": "theory", "type": "normsys", "data": {"hi": 1.1, "lo": 0.92}}]},
    {"name": "ttbar", "data": [50.0, 20.25, 7.5],
     "modifiers": [{"name": "bkg_unc", "type": "shapesys", "data": [5.0, 4.0, 1.5]},
                   {"name": "stat", "type": "staterror", "data": [1.0, 0.7, 0.4]}]},
]}]}
model = Model(spec)
pars = np.array(model.suggested_init)
pars[model.par_names.index("mu")] = 1.3
pars[model.par_names.index("theory")] = 0.4
data = np.concatenate([[57.5, 21.0, 6.25], model.pyhf_model.config.auxdata])
ours = model.logpdf(pars, data, model.templates())
reference = pyhf.Model(spec, poi_name="mu").logpdf(pars, data)[0]
print(json.dumps({"x64_before": before, "dtype": str(ours.dtype), "ours": float(ours),
                  "pyhf": float(reference),
                  "analysis_imported": "diffana.analysis" in sys.modules}))
"""


def test_stats_alone_is_float64_and_matches_pyhf():
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["x64_before"] is False  # float64 comes from importing diffana
    assert result["analysis_imported"] is False
    assert result["dtype"] == "float64"
    assert abs(result["ours"] - result["pyhf"]) <= 1e-10 * abs(result["pyhf"])
