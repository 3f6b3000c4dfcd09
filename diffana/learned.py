"""A run's parameters in a file of their own: the scalars and every parameter group.

A network's weights are too many for ``results.json``: a run with a network writes them,
with its input standardisation and the scalar parameters, to :data:`PARAMETERS_FILE` in the
run directory (NumPy's ``.npz``: ``scalar/<name>`` and ``<group>/<key>`` arrays), and
``results.json`` names the file (:func:`summary`); a run without one has its parameters in
``results.json`` (``params_final``). ``init: {from: RUN_DIR}`` starts a run from them
(:func:`load`, :func:`start_from`).

Example:
    >>> import tempfile, numpy as np
    >>> params = {"ht_min": 120.0, "nn": {"weights": np.arange(3.0), "shift": np.zeros(1)}}
    >>> with tempfile.TemporaryDirectory() as run_dir:
    ...     _ = save(Path(run_dir), params)
    ...     back = load(Path(run_dir))
    >>> back["ht_min"], back["nn"]["weights"].tolist()
    (120.0, [0.0, 1.0, 2.0])
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from diffana.exceptions import ConfigError
from diffana.files import write_atomic
from diffana.stages import region_edges

#: the file in a run directory that holds its final parameters
PARAMETERS_FILE = "parameters.npz"


def save(run_dir: Path, params: dict) -> Path:
    """Write ``params`` (scalars, and groups ``{key: array}``) to the run directory."""
    arrays = {}
    for name, value in params.items():
        if isinstance(value, dict):
            arrays.update({f"{name}/{k}": np.asarray(v, dtype=np.float64)
                           for k, v in value.items()})
        else:
            arrays[f"scalar/{name}"] = np.asarray(value, dtype=np.float64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = Path(run_dir) / PARAMETERS_FILE
    write_atomic(path, buffer.getvalue())
    return path


def load(run_dir: Path, key: str = "init.from") -> dict:
    """The parameters a run directory holds (``key``: the configuration key, for messages).

    Raises:
        ConfigError: no such directory, or no readable :data:`PARAMETERS_FILE` in it.
    """
    path = Path(run_dir) / PARAMETERS_FILE
    results = Path(run_dir) / "results.json"
    if not path.is_file() and results.is_file():  # a run without a network: its scalars
        try:
            return {k: float(v) for k, v in json.loads(results.read_text())["params_final"].items()}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{key}: {results} has no readable params_final ({err})") from None
    if not path.is_file():
        raise ConfigError(f"{key}: {str(run_dir)!r} holds no parameters ({PARAMETERS_FILE} or "
                          "results.json; expected the directory of a finished diffana run)")
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ConfigError(f"{key}: {path} cannot be read ({err})") from None
    out: dict = {}
    for k, v in arrays.items():
        group, _, name = k.partition("/")
        if group == "scalar":
            out[name] = float(v)
        else:
            out.setdefault(group, {})[name] = v
    return out


def start_from(params: dict, found: dict, source: str, key: str = "init.from",
               optional=()) -> dict:
    """``params`` with the values ``found`` in another run: every scalar parameter both
    have, and every group whole (a group of another shape is an error). The groups named in
    ``optional`` (trainable bin edges) keep their values where the other run has none.

    Raises:
        ConfigError: a group of ``params`` (but ``optional``) is missing from ``found``, or
            has other shapes.
    """
    out = dict(params)
    for name, value in params.items():
        if name not in found:
            if isinstance(value, dict) and name not in optional:
                raise ConfigError(f"{key}: {source} has no parameters of the network {name!r}")
            continue
        if isinstance(value, dict):
            theirs = found[name]
            for k, v in value.items():
                if k not in theirs or np.shape(theirs[k]) != np.shape(v):
                    raise ConfigError(
                        f"{key}: the network {name!r} of {source} has another shape ({k}: "
                        f"{np.shape(theirs.get(k))} there, {np.shape(v)} here); expected the "
                        "same inputs and hidden layers")
            out[name] = {k: np.asarray(theirs[k], dtype=np.float64) for k in value}
        else:
            out[name] = float(found[name])
    return out


def held_out(ana, initial: dict, final: dict) -> dict:
    """With a ``split``, ``results.json``'s ``hard_train`` (the hard objective of the
    training events, beside ``hard``: the test events') and ``split``; else nothing."""
    if ana.cfg.split is None:
        return {}
    return {"hard_train": {"objective_initial": ana.hard_objective(initial, part="train"),
                           "objective_final": ana.hard_objective(final, part="train")},
            "split": ana.cfg.split.model_dump()}


def write(ana, run_dir: Path, final: dict, gradient=None) -> dict:
    """With a network or trainable bin edges, the final parameters into the run directory,
    and what ``results.json`` says of them (``parameter_groups``: the file, each group's
    sizes and the norm of the objective's gradient in its weights at the end,
    ``gradient_norm``; trainable edges, ``edges``); else nothing.

    ``gradient``: the loss's gradient in ``u`` at ``final``, where the optimiser has it
    (evaluated again otherwise)."""
    if not ana.space.groups:
        return {}
    save(run_dir, final)
    out = summary(final)
    for region, group in ana.space.binnings.items():  # trainable edges, readable
        out["groups"][group]["edges"] = [float(e) for e in region_edges(ana.executor.kernel,
                                                                         region, final)]
    # the sensitivity of a group: one row, the norm of the objective's gradient in its weights
    grad = np.asarray(gradient if gradient is not None
                      else ana.loss_and_grad(ana.to_unit(final), final)[1])
    for name, where in ana.space.group_slices().items():
        if name in out["groups"]:
            out["groups"][name]["gradient_norm"] = float(np.linalg.norm(grad[where]))
    return {"parameter_groups": out}


def summary(params: dict) -> dict:
    """What ``results.json`` says of the parameter groups: the file and each group's size."""
    return {"file": PARAMETERS_FILE,
            "groups": {name: {k: int(np.size(v)) for k, v in value.items()}
                       for name, value in params.items() if isinstance(value, dict)}}
