"""A pydantic ``ValidationError`` as one line: the file, the key path, the value, what is allowed.

Example:
    >>> from pydantic import BaseModel, ValidationError
    >>> class Cut(BaseModel):
    ...     above: float
    >>> try:
    ...     Cut.model_validate({"above": "high"})
    ... except ValidationError as err:
    ...     print(format_validation_error("c.yaml", err, Cut))
    c.yaml: above: Input should be a valid number, unable to parse string as a number (got 'high')
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

_TAG_PREFIXES = ("function-", "union[", "tagged-union[", "lax-or-strict[", "json-or-python[")
_TYPE_NAMES = {str: ("a string", "strings"), float: ("a number", "numbers"),
               int: ("an integer", "integers"), bool: ("true or false", "true/false values")}
_PLAIN_KEY = re.compile(r"[^\s.\[\]'\"]+")  # written .key in a key path; others ['key']
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class KeyCheckError(ValueError):
    """A model check's error about one of the model's keys (``key``), not the whole mapping."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def one_line(message: str) -> str:
    """``message`` with line breaks and other control characters escaped."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], message)


def _unwrap(t: Any) -> Any:
    """``t`` without ``Annotated`` metadata and without ``None`` as an alternative."""
    while get_origin(t) is Annotated:
        t = get_args(t)[0]
    if _is_union(t):
        members = [a for a in get_args(t) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return t


def _is_union(t: Any) -> bool:
    return get_origin(t) in (Union, types.UnionType)


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _walk(loc: tuple, root: type[BaseModel]) -> tuple[str, Any]:
    """The key path of a pydantic error location in ``root`` and the type expected there
    (None: unknown).

    Union members add a tag to the location (``function-after[...]``, ``str``); those are
    skipped, and a mapping's keys are written ``.key``, a list's indices ``[i]``.
    """
    path, t = "", root
    for part in loc:
        t = _unwrap(t)
        if _is_union(t) or (t is None and str(part).startswith(_TAG_PREFIXES)):
            t = None
            continue
        if isinstance(part, int) and (t is None or get_origin(t) in (list, tuple)):
            path += f"[{part}]"
        elif not _PLAIN_KEY.fullmatch(str(part)) or len(str(part)) > 80:
            path += f"[{show(part)}]"
        else:
            path += f".{part}" if path else str(part)
        if _is_model(t):
            field = t.model_fields.get(str(part))
            t = field.annotation if field is not None else None
        elif get_origin(t) is tuple:
            args = get_args(t)
            t = args[part] if isinstance(part, int) and part < len(args) else None
        elif get_origin(t) in (list, dict):
            t = get_args(t)[-1]
        else:
            t = None
    return path or "<top level>", t


def describe(t: Any, plural: bool = False) -> str:
    """What a value of type ``t`` looks like in YAML, e.g. ``a list of strings``."""
    t = _unwrap(t)
    origin, args = get_origin(t), get_args(t)
    if _is_union(t):
        return " or ".join(describe(a, plural) for a in args if a is not type(None))
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin is list:
        return "lists" if plural else f"a list of {describe(args[0], plural=True)}"
    if origin is tuple:
        return f"[{', '.join(describe(a) for a in args)}]"
    if origin is dict:
        return "mappings" if plural else f"a mapping of names to {describe(args[1], plural=True)}"
    if _is_model(t):
        return f"{'mappings' if plural else 'a mapping'} with keys {', '.join(t.model_fields)}"
    if t in _TYPE_NAMES:
        return _TYPE_NAMES[t][plural]
    return "any value"


def _pieces(value: Any, limit: int, depth: int = 0) -> Iterator[str]:
    """``repr(value)`` in pieces of at most about ``limit`` characters: a reader that stops
    early never builds the rest (a list of a million numbers, a structure nested 1000 deep)."""
    if depth > 16:
        yield "..."
    elif isinstance(value, dict):
        yield "{"
        for i, (key, item) in enumerate(value.items()):
            yield ", " if i else ""
            yield from _pieces(key, limit, depth + 1)
            yield ": "
            yield from _pieces(item, limit, depth + 1)
        yield "}"
    elif isinstance(value, list | tuple):
        yield "[" if isinstance(value, list) else "("
        for i, item in enumerate(value):
            yield ", " if i else ""
            yield from _pieces(item, limit, depth + 1)
        yield "]" if isinstance(value, list) else ("," if len(value) == 1 else "") + ")"
    elif isinstance(value, str):
        yield repr(value[:limit + 1])
    elif isinstance(value, int) and value.bit_length() > 4 * limit:  # repr refuses > 4300 digits
        yield f"<an integer of {value.bit_length()} bits>"
    else:
        yield repr(value)


def show(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (ending ``...``) however large the value:
    how every configuration error shows a value.

    >>> show(list(range(10**6)), limit=20)
    '[0, 1, 2, 3, 4, 5...'
    """
    text = ""
    for piece in _pieces(value, limit):
        text += piece
        if len(text) > limit:
            return text[:limit - 3] + "..."
    return text


def format_validation_error(source: str, err: ValidationError, root: type[BaseModel]) -> str:
    """One line: the file, the key path, the value found and what is allowed.

    ``root`` is the model that was validated: the key path is followed through its fields.
    """
    errors = err.errors(include_url=False)
    e = errors[0]
    path, expected = _walk(e["loc"], root)
    value = e.get("input")
    if e["type"] == "extra_forbidden":
        model = _unwrap(_walk(e["loc"][:-1], root)[1])
        allowed = list(model.model_fields) if _is_model(model) else []
        close = difflib.get_close_matches(str(e["loc"][-1]), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ";"
        return one_line(f"{source}: {path}: unknown key (value {show(value)}){hint} "
                        f"allowed: {', '.join(allowed)}")
    if e["type"] == "missing":
        return one_line(f"{source}: {path}: required key is missing "
                        f"(expected {describe(expected)})")
    if e["type"] == "invalid_key" or e["loc"][-1:] == ("[key]",):
        path = _walk(e["loc"][:-1], root)[0] if e["type"] != "invalid_key" else path
        return one_line(f"{source}: {path}: key {show(value)} is not a string; keys are names "
                        "(quote it)")
    error = e.get("ctx", {}).get("error")
    msg = e["msg"].removeprefix("Value error, ")
    if isinstance(error, KeyCheckError):
        path = f"{path}.{error.key}" if path != "<top level>" else error.key
        value = value.get(error.key) if isinstance(value, dict) else value
    elif e["type"] in ("model_type", "model_attributes_type", "dict_type", "list_type",
                       "tuple_type") and expected is not None:
        msg = f"Input should be {describe(expected)}"
    union = [x for x in errors if _walk(x["loc"], root)[0] == path and x["type"] != "missing"]
    if len(union) > 1:  # one error per alternative of a union: name every alternative
        alternatives = [x["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
                        .split(", ")[0] for x in union]
        msg = "Input should be " + " or ".join(dict.fromkeys(alternatives))
    # the checks' own messages name the value, except checks of a whole mapping
    named = e["type"] == "value_error" and not isinstance(value, dict)
    shown = "" if path == "<top level>" or named else f" (got {show(value)})"
    return one_line(f"{source}: {path}: {msg}{shown}")
