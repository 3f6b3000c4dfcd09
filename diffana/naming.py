"""How diffana spells the names it makes: the one place for each naming rule.

- the variation ``v`` of sample ``S`` is the sample (template) ``S_v``,
- a histogram of template ``key`` in region ``R`` is ``R_key`` in a histogram file (the AGC's
  ``4j1b_ttbar``, ``4j2b_wjets_pt_scale_up``),
- an object collection's field ``f`` is read from the branch ``<source>_f`` (``Jet_pt``),
- the trainable bin edges of region ``R`` are the parameter group ``R_edges``.

Example:
    >>> variation_key("ttbar", "pt_scale_up")
    'ttbar_pt_scale_up'
    >>> histogram_key("4j1b", "ttbar_pt_scale_up")
    '4j1b_ttbar_pt_scale_up'
    >>> field_branch("Jet", "btagCSVV2")
    'Jet_btagCSVV2'
    >>> edges_group("4j2b")
    '4j2b_edges'
"""

from __future__ import annotations


def variation_key(sample: str, variation: str) -> str:
    """The template (sample) name of ``variation`` of ``sample``."""
    return f"{sample}_{variation}"


def histogram_key(region: str, template: str) -> str:
    """The key of a region's template in a histogram file."""
    return f"{region}_{template}"


def field_branch(source: str, field: str) -> str:
    """The branch of a collection's field: ``<source>_<field>``."""
    return f"{source}_{field}"


def edges_group(region: str) -> str:
    """The parameter group of a region's trainable bin edges."""
    return f"{region}_edges"
