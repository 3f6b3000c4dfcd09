"""docs/configuration.md is what the schema generates (it cannot drift from the loader)."""

from __future__ import annotations

from conftest import ROOT

from diffana.config.reference import markdown


def test_configuration_reference_is_up_to_date():
    written = (ROOT / "docs" / "configuration.md").read_text()
    assert written == markdown(), ("docs/configuration.md is out of date: "
                                   "python -m diffana.config.reference > docs/configuration.md")
