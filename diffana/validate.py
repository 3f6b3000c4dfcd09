"""``diffana validate``: check a configuration and its input files without running it."""

from __future__ import annotations

from pathlib import Path

from diffana import config as configmod
from diffana import io
from diffana.analysis import prepare
from diffana.events import branches_for
from diffana.generate import GENERATORS, generated_dir
from diffana.plan import ParameterSpace


def validate(config_path: str | Path, imports: bool = True) -> str:
    """Check a configuration and its inputs without running it; a one-line summary.

    Checks the schema and cross-references, runs the preparation that ``run`` does before it
    reads an event (:func:`diffana.analysis.prepare`: the plan, every observable's own check,
    the device, the executor and its optional dependencies, the model's structure), then opens
    every input file that exists or should exist (not events still to be generated) and checks
    its tree, its branches, and that each sample has events.

    ``imports=False`` (``diffana validate --no-imports``) runs none of the configuration's
    ``imports:`` and checks everything but what only they can register: the observable
    kinds they define (and the branches those kinds read) and their generator, named in the
    summary as unchecked.
    """
    config_path = Path(config_path)
    cfg = configmod.load(config_path, imports=imports)
    notes = []
    kinds = [] if imports else configmod.plugin_kinds(cfg)
    if kinds:  # the plan reads the branches of the other observables
        notes.append(f"{len(kinds)} observable kind{'s' if len(kinds) > 1 else ''} unchecked "
                     f"(from imports: {', '.join(kinds)})")
        cfg = cfg.model_copy(update={"observables": {
            n: o for n, o in cfg.observables.items() if o.kind not in kinds}})
    plan = prepare(cfg, source=str(config_path)).plan  # what run prepares before reading
    generated, skip_generated = None, False
    if cfg.generate is not None:
        g = cfg.generate
        own = g.kind in GENERATORS and configmod.from_diffana(GENERATORS[g.kind])
        if imports or own or not cfg.imports:
            generated = generated_dir(g.kind, g.events, g.seed)
            skip_generated = not (generated / ".complete").exists()
            if skip_generated:
                notes.insert(0, "events are generated on first run")
        else:
            skip_generated = True
            notes.append(f"generator {g.kind!r} and its files unchecked (from imports)")
    checked = 0
    for name, sample in cfg.samples.items():
        uses_generated = any("{generated}" in f for f in sample.files)
        if uses_generated and skip_generated:
            continue
        branches, tree = branches_for(cfg, plan, name), sample.tree or cfg.tree
        paths = [configmod.resolve_path(f, config_path.parent, generated) for f in sample.files]
        entries = 0
        for path in paths:
            io.check_branches(path, tree, branches)
            entries += io.identity(path, tree)["entries"]
            checked += 1
        if not entries:  # run reads no event of the sample
            raise io.no_events(paths, tree)
    space = ParameterSpace.of(cfg)
    counts = [(len(cfg.samples), "sample"), (len(cfg.regions), "region"),
              (len(space.trainable), "trainable parameter"),
              *((len(g["weights"]), f"{name} weight") for name, g in space.groups.items()),
              (checked, "input file")]
    said = ", ".join(f"{n:,} {what}{'' if n == 1 else 's'}".replace(",", " ")
                     for n, what in counts)
    return f"{config_path}: valid ({said} checked{''.join(f'; {n}' for n in notes)})"
