"""The command line itself: its version, its help, the words of its summaries."""

from __future__ import annotations

import argparse

import pytest
from conftest import default_config_dict, write_config

from diffana import __version__, cli


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == f"diffana {__version__}\n"


def test_every_argument_has_help():
    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {action.dest}" for name, sub in commands.choices.items()
               for action in sub._actions
               if not isinstance(action, argparse._HelpAction) and not action.help]
    assert missing == []


def test_validate_counts_in_words(tmp_path, capsys):
    """One region, one trainable parameter: singular in validate's summary."""
    data = default_config_dict(5_000)
    data["regions"] = dict(list(data["regions"].items())[:1])
    for name, parameter in data["parameters"].items():
        if name != next(iter(data["parameters"])):
            parameter["trainable"] = False
    path = write_config(tmp_path / "one.yaml", data)
    assert cli.main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert " 1 region, " in out and " 1 trainable parameter, " in out, out


@pytest.mark.parametrize("flag", ["--quiet", "-v"])
def test_quiet_and_verbose(flag, tmp_path, capsys):
    """The diffana logger says each phase with its seconds by default, more with -v, and
    with --quiet nothing but warnings (no phase lines, no progress bars)."""
    path = write_config(tmp_path / "c.yaml", default_config_dict(2_000))
    assert cli.main(["run", str(path), "--steps", "0", "--out", str(tmp_path / "run"),
                     flag]) == 0
    captured = capsys.readouterr()
    said = [line for line in captured.err.splitlines() if line.startswith("diffana: ")]
    phases = [line for line in said if line.startswith("diffana: compiled and evaluated")]
    if flag == "--quiet":
        assert phases == [] and "it/s" not in captured.err
        assert all(line.startswith("diffana: warning [") for line in said), said
    else:
        assert len(phases) == 1 and phases[0].endswith(" s")
        assert any(line.startswith("diffana: configuration ") for line in said)  # DEBUG
    assert "run directory: " in captured.out  # the summary, either way
