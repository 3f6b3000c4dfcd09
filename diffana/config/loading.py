"""Loading a configuration: YAML (each key once), the schema, the plugin imports, the references.

Example:
    >>> data = {"samples": {"sig": {"files": ["s.root"], "cross_section": 1.0},
    ...                     "bkg": {"files": ["b.root"], "cross_section": 1.0}},
    ...         "regions": {"SR": {"observable": "njets", "binning": {"edges": [0, 4, 9]}}},
    ...         "observables": {"njets": {"kind": "count", "collection": "jets"}},
    ...         "objects": {"jets": {"source": "Jet"}},
    ...         "model": {"signal": ["sig"]}}
    >>> load_dict(data, source="c.yaml").regions["SR"].binning.edges
    [0.0, 4.0, 9.0]
    >>> load_dict({**data, "luminosity": -1}, source="c.yaml")
    Traceback (most recent call last):
    ...
    diffana.exceptions.ConfigError: c.yaml: luminosity: Input should be greater than 0 (got -1)
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from diffana.config.errors import format_validation_error, one_line
from diffana.config.references import check_references
from diffana.config.schema import AnalysisConfig
from diffana.exceptions import ConfigError


def _already_imported(path: Path) -> bool:
    """Whether the file is already imported under its package name (registering twice would
    replace the registered functions with copies from a second module object)."""
    return any(getattr(m, "__file__", None) and Path(m.__file__).resolve() == path
               for m in list(sys.modules.values()))


def _import_plugins(imports: list[str], source: str, base_dir: Path | None) -> None:
    """Import the modules named in ``imports`` (they register observables, generators...).

    An entry is a module name (``analyses.agc_ttbar``) or a ``.py`` file relative to the
    configuration's directory.
    """
    for i, name in enumerate(imports):
        try:
            if name.endswith(".py"):
                path = (Path(name) if base_dir is None else base_dir / name).resolve()
                module_name = f"diffana_imports.{path.parent.name}.{path.stem}"
                if module_name not in sys.modules and not _already_imported(path):
                    spec = importlib.util.spec_from_file_location(module_name, path)
                    module = importlib.util.module_from_spec(spec)
                    sys.modules[module_name] = module  # dataclasses and pickling look it up
                    try:
                        spec.loader.exec_module(module)
                    except BaseException:
                        del sys.modules[module_name]
                        raise
            else:
                importlib.import_module(name)
        except Exception as err:
            raise ConfigError(one_line(
                f"{source}: imports[{i}]: cannot import {name!r} ({type(err).__name__}: {err})"
            )) from None


def load_dict(data: Any, source: str = "<config>", base_dir: Path | None = None) -> AnalysisConfig:
    """Validate a configuration given as a Python mapping.

    In three steps: the schema, then the ``imports:`` (plugin code, run only for a
    configuration that follows the schema), then the cross-references, which may name the
    observable kinds those imports registered.

    Args:
        data: the configuration, as YAML or JSON would give it.
        source: where it came from (a file name), the start of every error message.
        base_dir: the directory ``.py`` files in ``imports:`` are relative to.

    Raises:
        ConfigError: one line naming ``source``, the key path, the value and what is allowed.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: <top level>: expected a mapping of keys, got {type(data).__name__}"
        )
    imports = data.get("imports")
    if imports is not None and not isinstance(imports, list):
        raise ConfigError(f"{source}: imports: expected a list of modules, got {imports!r}")
    try:
        cfg = AnalysisConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err, AnalysisConfig)) from None
    _import_plugins(cfg.imports, source, base_dir)
    check_references(cfg, source)
    return cfg


def _check_unique_keys(node: yaml.Node, path: str, source: str, seen: set[int]) -> None:
    """Raise on a key given twice in one mapping (YAML loaders keep the last silently)."""
    if id(node) in seen:  # an alias to a node already checked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if key is not None and key_node.tag != "tag:yaml.org,2002:merge":
                if key in first:
                    raise ConfigError(one_line(
                        f"{source}:{line}: {path or '<top level>'}: duplicate key {key!r} "
                        f"(first given on line {first[key]}; each key may appear once)"))
                first[key] = line
            _check_unique_keys(value_node, f"{path}.{key}" if path else str(key), source, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, f"{path}[{i}]", source, seen)


def _yaml_load(text: str, source: str) -> Any:
    """``yaml.safe_load`` that also rejects duplicate keys."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_unique_keys(node, "", source, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load(path: str | Path) -> AnalysisConfig:
    """Read and validate a YAML configuration file.

    Raises:
        ConfigError: the file is missing or unreadable, is not valid YAML, gives a key twice
            in one mapping, or does not follow the schema.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: byte {err.start} is not UTF-8 text; expected a YAML "
                          "configuration") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror})") from None
    try:
        data = _yaml_load(text, str(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(one_line(f"{path}: {where}YAML syntax error: {problem}")) from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty; expected a mapping of keys")
    return load_dict(data, source=str(path), base_dir=path.parent)


def dump(cfg: AnalysisConfig) -> str:
    """The resolved configuration (defaults filled in) as YAML."""
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False)


def resolve_path(pattern: str, base: Path, generated: Path | None) -> Path:
    """Expand ``{generated}`` and make a relative file path relative to the config's directory."""
    text = pattern
    if "{generated}" in text:
        if generated is None:
            raise ConfigError(
                f"{pattern}: uses {{generated}} but the config has no generate: block")
        text = text.replace("{generated}", str(generated))
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p
