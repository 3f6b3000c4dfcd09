"""Loading a configuration: YAML (each key once), the schema, the plugin imports, the references.

Example:
    >>> data = {"samples": {"sig": {"files": ["s.root"], "cross_section": 1.0},
    ...                     "bkg": {"files": ["b.root"], "cross_section": 1.0}},
    ...         "regions": {"SR": {"observable": "njets", "binning": {"edges": [0, 4, 9]}}},
    ...         "observables": {"njets": {"kind": "count", "collection": "jets"}},
    ...         "objects": {"jets": {"source": "Jet"}},
    ...         "model": {"signal": ["sig"]}, "luminosity": 1.0}
    >>> load_dict(data, source="c.yaml").regions["SR"].binning.edges
    [0.0, 4.0, 9.0]
    >>> load_dict({**data, "luminosity": -1}, source="c.yaml")
    Traceback (most recent call last):
    ...
    diffana.exceptions.ConfigError: c.yaml: luminosity: Input should be greater than 0 (got -1)
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from diffana.config.errors import format_validation_error, one_line, show
from diffana.config.references import check_references
from diffana.config.schema import AnalysisConfig
from diffana.exceptions import ConfigError

# What a configuration file may make the loader do. An alias repeats the whole subtree it
# names, so nine levels of ten aliases (a few hundred bytes) stand for 10^9 nodes, which
# pydantic would expand one by one. The limits are far above any analysis configuration
# (the AGC's: 7.5 kB, 7 levels, no aliases, under 700 nodes) and each is refused in
# milliseconds, before anything is expanded.
MAX_FILE_BYTES = 10_000_000
MAX_DEPTH = 64  # mappings and lists nested in each other
MAX_ALIASES = 100  # *alias references
MAX_NODES = 1_000_000  # nodes once every alias is expanded


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
                path = _plugin_file(name, base_dir)
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
                f"{source}: imports[{i}]: cannot import {show(name)} ({type(err).__name__}: {err})"
            )) from None


def _plugin_file(name: str, base_dir: Path | None) -> Path:
    """The file an ``imports:`` entry ending in ``.py`` names (relative to ``base_dir``)."""
    return (Path(name) if base_dir is None else base_dir / name).resolve()


def imported_files(cfg: AnalysisConfig, base_dir: Path | None) -> dict[str, str | None]:
    """``{entry: SHA-256 of the file it runs}`` for each of ``cfg.imports``: a ``.py`` file
    (relative to ``base_dir``, the configuration's directory) or a module's source file
    (None where there is none, as for a namespace package).

    Example:
        >>> from pathlib import Path
        >>> cfg = AnalysisConfig.model_validate({
        ...     "imports": ["agc_ttbar/observables.py"],
        ...     "samples": {"s": {"files": ["s.root"], "cross_section": 1.0}},
        ...     "regions": {"SR": {"observable": "x", "binning": {"edges": [0, 1]}}},
        ...     "model": {"signal": ["s"]}, "luminosity": 1.0})
        >>> digest = imported_files(cfg, Path("analyses"))["agc_ttbar/observables.py"]
        >>> len(digest)
        64
    """
    out: dict[str, str | None] = {}
    for name in cfg.imports:
        if name.endswith(".py"):
            path: Path | str | None = _plugin_file(name, base_dir)
        else:
            spec = importlib.util.find_spec(name)
            path = spec.origin if spec is not None and spec.has_location else None
        out[name] = hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    return out


def load_dict(data: Any, source: str = "<config>", base_dir: Path | None = None,
              imports: bool = True) -> AnalysisConfig:
    """Validate a configuration given as a Python mapping.

    In three steps: the schema, then the ``imports:`` (plugin code, run only for a
    configuration that follows the schema), then the cross-references, which may name the
    observable kinds those imports registered.

    Args:
        data: the configuration, as YAML or JSON would give it.
        source: where it came from (a file name), the start of every error message.
        base_dir: the directory ``.py`` files in ``imports:`` are relative to.
        imports: run the ``imports:``. With False none of their code runs, and the observable
            kinds that only they could register are left unchecked
            (:func:`~diffana.config.references.plugin_kinds`).

    Raises:
        ConfigError: one line naming ``source``, the key path, the value and what is allowed.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: <top level>: expected a mapping of keys, got {type(data).__name__}"
        )
    modules = data.get("imports")
    if modules is not None and not isinstance(modules, list):
        raise ConfigError(f"{source}: imports: expected a list of modules, got {show(modules)}")
    try:
        cfg = AnalysisConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err, AnalysisConfig)) from None
    if imports:
        _import_plugins(cfg.imports, source, base_dir)
    check_references(cfg, source, imports=imports)
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
                        f"{source}:{line}: {path or '<top level>'}: duplicate key {show(key)} "
                        f"(first given on line {first[key]}; each key may appear once)"))
                first[key] = line
            _check_unique_keys(value_node, f"{path}.{key}" if path else str(key), source, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, f"{path}[{i}]", source, seen)


class _Loader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses, while it composes the node tree, nesting deeper than
    :data:`MAX_DEPTH` and more than :data:`MAX_ALIASES` aliases (the composer recurses once
    per level: 500 levels would end in a ``RecursionError``)."""

    def __init__(self, text: str, source: str):
        super().__init__(text)
        self.source, self.depth, self.aliases = source, 0, 0

    def _refuse(self, what: str, limit: str) -> ConfigError:
        line = self.peek_event().start_mark.line + 1
        return ConfigError(f"{self.source}:{line}: {what}; expected at most {limit}")

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise self._refuse(f"more than {MAX_ALIASES} YAML aliases",
                                   f"{MAX_ALIASES} aliases (*name) in a configuration")
            return super().compose_node(parent, index)
        nested = self.check_event(yaml.MappingStartEvent, yaml.SequenceStartEvent)
        self.depth += nested
        if self.depth > MAX_DEPTH:
            raise self._refuse(f"mappings and lists nested more than {MAX_DEPTH} deep",
                               f"{MAX_DEPTH} levels of nesting")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= nested

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except ValueError as err:  # an integer of more than 4300 digits, a date like 2001-13-45
            problem = str(err).split(";")[0]
            raise ConfigError(one_line(f"{self.source}:{node.start_mark.line + 1}: "
                                       f"{show(node.value)} cannot be read ({problem})")) from None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return node.value if isinstance(node, yaml.SequenceNode) else []


def _check_expanded_size(root: yaml.Node, source: str) -> None:
    """Raise where expanding the aliases would give more than :data:`MAX_NODES` nodes, or
    never end (an alias inside the node it names). Counted on the node graph, each node once
    (its expanded size memoised by id), without building anything."""
    size: dict[int, int] = {}
    entered: set[int] = set()  # on the path from the root: seen again, an alias cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            size[id(node)] = 1 + sum(size[id(child)] for child in _children(node))
            entered.discard(id(node))
            if size[id(node)] > MAX_NODES:
                raise ConfigError(
                    f"{source}:{node.start_mark.line + 1}: YAML aliases here expand to more than "
                    f"{MAX_NODES:,} values; expected at most {MAX_NODES:,} in a configuration")
        elif id(node) in entered:
            raise ConfigError(f"{source}:{node.start_mark.line + 1}: a YAML alias refers to a "
                              "mapping or list that contains it; expected no alias cycles")
        elif id(node) not in size:
            entered.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))


def _yaml_load(text: str, source: str) -> Any:
    """``yaml.safe_load`` that also rejects duplicate keys and what exceeds the limits
    (:data:`MAX_DEPTH`, :data:`MAX_ALIASES`, :data:`MAX_NODES`)."""
    loader = _Loader(text, source)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, source)
        _check_unique_keys(node, "", source, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load(path: str | Path, imports: bool = True) -> AnalysisConfig:
    """Read and validate a YAML configuration file.

    ``imports``: run the configuration's ``imports:`` (see :func:`load_dict`).

    Raises:
        ConfigError: the file is missing or unreadable, is not valid YAML, gives a key twice
            in one mapping, exceeds a limit (:data:`MAX_FILE_BYTES`, :data:`MAX_DEPTH`,
            :data:`MAX_ALIASES`, :data:`MAX_NODES`), or does not follow the schema.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes; expected a configuration of at most "
                          f"{MAX_FILE_BYTES:,} bytes")
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
    return load_dict(data, source=str(path), base_dir=path.parent, imports=imports)


def dump(cfg: AnalysisConfig, base_dir: Path | None = None) -> str:
    """The resolved configuration (defaults filled in) as YAML.

    ``base_dir``: the directory relative paths were relative to; given, the plugin files
    (``imports:``) and the input files are written as absolute paths, so that the dump runs
    again from wherever it is (a run directory's ``config.resolved.yaml``).
    """
    data = cfg.model_dump(mode="json", exclude_none=True)
    if base_dir is not None:
        data["imports"] = [str(_plugin_file(i, base_dir)) if i.endswith(".py") else i
                           for i in data["imports"]]
        for sample in data["samples"].values():
            sample["files"] = [f if "{generated}" in f or Path(f).expanduser().is_absolute()
                               else str((base_dir / f).resolve()) for f in sample["files"]]
    return yaml.safe_dump(data, sort_keys=False)


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
