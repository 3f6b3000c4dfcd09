"""``diffana validate``: check a configuration and its input files without running it."""

from __future__ import annotations

from pathlib import Path

from diffana import config as configmod
from diffana import io
from diffana.events import branches_for
from diffana.generate import generated_dir
from diffana.plan import ParameterSpace, build


def validate(config_path: str | Path) -> str:
    """Check a configuration and its inputs without running it; a one-line summary.

    Checks the schema and cross-references, then opens every input file that exists or
    should exist (not events still to be generated) and checks its tree and branches.
    """
    config_path = Path(config_path)
    cfg = configmod.load(config_path)
    plan = build(cfg)
    generated, pending = None, False
    if cfg.generate is not None:
        g = cfg.generate
        generated = generated_dir(g.kind, g.events, g.seed)
        pending = not (generated / ".complete").exists()
    checked = 0
    for name, sample in cfg.samples.items():
        uses_generated = any("{generated}" in f for f in sample.files)
        if uses_generated and pending:
            continue
        branches = branches_for(cfg, plan, name)
        for f in sample.files:
            path = configmod.resolve_path(f, config_path.parent, generated)
            io.check_branches(path, sample.tree or cfg.tree, branches)
            checked += 1
    note = "; events are generated on first run" if pending else ""
    return (f"{config_path}: valid ({len(cfg.samples)} samples, {len(cfg.regions)} regions, "
            f"{len(ParameterSpace.of(cfg).trainable)} trainable parameters, "
            f"{checked} input files checked{note})")
