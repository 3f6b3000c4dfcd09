"""diffana: differentiable HEP analysis.

Soft cuts on ragged events, KDE histograms and a HistFactory likelihood (pyhf spec), chained
and differentiated end to end with JAX, optimised with optax.
"""

from diffana.exceptions import ConfigError, DataError, DiffanaError, NumericalError

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
