"""The value types every part of the schema shares: a finite number, a threshold, a strict model.

Example:
    >>> from pydantic import TypeAdapter
    >>> TypeAdapter(Number).validate_python("1e3")  # PyYAML reads 1e3 as a string
    1000.0
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AllowInfNan, BaseModel, BeforeValidator, ConfigDict
from pydantic_core import PydanticCustomError


def _not_bool(value: Any) -> Any:
    # YAML reads yes/no/on/off as booleans, which pydantic would take as 1.0 and 0.0
    if isinstance(value, bool):
        raise PydanticCustomError("float_type", "Input should be a finite number, not true/false")
    return value


# a finite number; a string that parses as one is accepted (PyYAML reads 1e3 as a string)
Number = Annotated[float, BeforeValidator(_not_bool), AllowInfNan(False)]

# a cut value: a number (a hard cut) or the name of a parameter (a soft cut)
Threshold = Number | str


class StrictModel(BaseModel):
    """A configuration block: unknown keys are errors, and a loaded block never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def exactly_one(block: BaseModel, keys: tuple[str, ...]) -> None:
    """Raise unless exactly one of ``keys`` is given in ``block`` (a block of one form)."""
    given = [k for k in keys if getattr(block, k) is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(keys)} (given: {given or 'none'})")


def bounds_problem(lo: float, hi: float) -> str | None:
    """What is wrong with ``[lo, hi]`` as the bounds of a parameter (None: nothing).

    They must increase, and their width ``hi - lo`` must be a finite number: a parameter is
    optimised in the unit box ``(x - lo) / (hi - lo)``, and ``[-1e308, 1e308]`` (each bound
    finite) has an infinite width.

    >>> bounds_problem(-1e308, 1e308)
    'bounds [-1e+308, 1e+308] have a width hi - lo of inf; expected a finite width'
    """
    if not lo < hi:
        return f"bounds must be increasing, got [{lo}, {hi}]"
    if not math.isfinite(hi - lo):
        return f"bounds [{lo}, {hi}] have a width hi - lo of {hi - lo}; expected a finite width"
    return None
