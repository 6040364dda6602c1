"""Text like "name:key=value,key=value", read into a dataclass config's typed fields.

Codecs (`Codec.parse`) and channels (`Channel.parse`) are chosen on the command line
and stored in results this way; values are typed from the config's type hints
(int, float, str, bool, Literal choices, optional "none"); floats must be finite.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any


def split(text: str, what: str) -> tuple[str, dict[str, str]]:
    """("name", {"key": "value"}) from "name:key=value,key=value"; `what` names it in errors."""
    name, _, rest = text.partition(":")
    params: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"{what} parameter {item!r} is not key=value")
        if key.strip() in params:
            raise ValueError(f"{what} parameter {key.strip()!r} is given twice")
        params[key.strip()] = value.strip()
    return name.strip(), params


def typed(params: dict[str, str], config_cls: type, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The values of `params` converted to the types of `config_cls`'s fields.

    `extra` gives the types of keys that are not fields; unknown keys stay strings
    (the config's constructor then names them in its error).
    """
    hints = typing.get_type_hints(config_cls) | (extra or {})
    return {k: convert(v, hints[k], k) if k in hints else v for k, v in params.items()}


def convert(value: str, kind: Any, key: str) -> Any:
    """A string from the command line as a value of the field's type; ValueError names `key`."""
    try:
        return _read(value, kind)
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None


def _read(value: str, kind: Any) -> Any:
    """`value` as a `kind` (int, float, str, bool, Literal, optional "none"); floats must be
    finite. Raises ValueError saying what is allowed (without naming the field)."""
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        for choice in typing.get_args(kind):
            if str(choice) == value:
                return choice
        raise ValueError(f"must be one of {', '.join(map(str, typing.get_args(kind)))}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if value.lower() == "none" and len(options) < len(typing.get_args(kind)):
            return None
        return _read(value, options[0])
    if kind is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"must be true or false, got {value!r}")
    try:
        result = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"cannot read {value!r} as {getattr(kind, '__name__', kind)}") from None
    if kind is float and not math.isfinite(result):
        raise ValueError(f"must be a finite number, got {value!r}")
    return result
