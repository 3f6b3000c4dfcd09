"""diffana: differentiable HEP analysis.

Soft cuts on ragged events, KDE histograms and a HistFactory likelihood (pyhf spec), chained
and differentiated end to end with JAX, optimised with optax.
"""

import jax

from diffana.exceptions import ConfigError, DataError, DiffanaError, NumericalError

# Physics results are float64 throughout (likelihoods, fits, yields of millions of events):
# JAX defaults to float32, and pyhf's JAX backend switches float64 on only when imported, so
# it is set here, once, for every part of diffana (a user may import diffana.stats alone).
jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"

__all__ = ["Analysis", "ConfigError", "DataError", "DiffanaError", "NumericalError",
           "load_config", "__version__"]


def __getattr__(name):
    # Lazy: importing diffana must stay cheap (the CLI validates configs without JAX work).
    if name == "Analysis":
        from diffana.analysis import Analysis

        return Analysis
    if name == "load_config":
        from diffana.config import load

        return load
    raise AttributeError(name)
