"""The YAML configuration: schema, loading and one-line error messages.

A configuration names the inputs (samples and their files), the analysis parameters
(cut thresholds with bounds and temperatures), the objects and their cuts, the event
selection, the regions with their observable and binning, the statistical model, the
objective and the optimiser. :func:`load` validates it and returns an :class:`AnalysisConfig`.

The parts, in the order a configuration goes through them:

- :mod:`~diffana.config.loading`: YAML (each key once), then the steps below,
- :mod:`~diffana.config.schema` (with :mod:`~diffana.config.statistics` and
  :mod:`~diffana.config.values`): the pydantic models, one per block of the YAML,
- :mod:`~diffana.config.errors`: a schema error as one line (file, key path, value, allowed),
- :mod:`~diffana.config.references`: every name used is defined (after the ``imports:``),
- names diffana makes (variation templates, histogram keys, branches) are spelled in
  :mod:`diffana.naming`, below the configuration.

Example:
    >>> from diffana.config import load_dict
    >>> cfg = load_dict({"samples": {"sig": {"files": ["s.root"], "cross_section": 1.0},
    ...                              "bkg": {"files": ["b.root"], "cross_section": 10.0}},
    ...                  "regions": {"SR": {"observable": "ht",
    ...                              "binning": {"bins": 3, "low": 0, "high": 300}}},
    ...                  "observables": {"ht": {"kind": "sum", "collection": "jets",
    ...                                         "field": "pt"}},
    ...                  "objects": {"jets": {"source": "Jet"}},
    ...                  "model": {"signal": ["sig"]}, "luminosity": 1.0})
    >>> cfg.regions["SR"].binning.edges
    [0.0, 100.0, 200.0, 300.0]
"""

from diffana.config.loading import dump, imported_files, load, load_dict, resolve_path
from diffana.config.references import check_references, from_diffana, plugin_kinds
from diffana.config.schema import (
    AnalysisConfig,
    Binning,
    Executor,
    Generate,
    ObjectCollection,
    ObjectCut,
    Observable,
    Parameter,
    Region,
    Requirement,
    Sample,
    Variation,
    chunked_evaluation_conflict,
)
from diffana.config.statistics import (
    INTERPOLATION_CODES,
    Inference,
    Interpolation,
    ModelConfig,
    Objective,
    Optimiser,
    Systematic,
    optax_optimiser,
)
from diffana.config.values import Number, Threshold

__all__ = [
    "INTERPOLATION_CODES",
    "AnalysisConfig",
    "Binning",
    "Executor",
    "Generate",
    "Inference",
    "Interpolation",
    "ModelConfig",
    "Number",
    "ObjectCollection",
    "ObjectCut",
    "Objective",
    "Observable",
    "Optimiser",
    "Parameter",
    "Region",
    "Requirement",
    "Sample",
    "Systematic",
    "Threshold",
    "Variation",
    "check_references",
    "chunked_evaluation_conflict",
    "dump",
    "from_diffana",
    "imported_files",
    "load",
    "load_dict",
    "optax_optimiser",
    "plugin_kinds",
    "resolve_path",
]
