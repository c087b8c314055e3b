"""Turning presets and ``key=value`` overrides into a method's frozen config dataclass."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A config the user must fix; the message is one line saying what to change."""


def _coerce(name: str, text: str, annotation: Any) -> Any:
    """Convert an override string to the field's declared type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, text, inner[0])
    if origin is tuple:
        items = [s for s in text.strip("()[]").split(",") if s.strip()]
        return tuple(_coerce(name, s.strip(), args[0]) for s in items)
    if annotation is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={text}: expected true or false")
    if annotation in (int, float, str):
        try:
            return annotation(text)
        except ValueError:
            raise ConfigError(f"{name}={text}: expected {annotation.__name__}") from None
    return text


def build_config(cls: type, preset: dict, overrides: list[str]) -> Any:
    """``cls(**preset)`` with ``key=value`` overrides applied, each converted to its field's type.

    Raises:
        ConfigError: for malformed overrides, unknown keys (with the known ones listed), values of
            the wrong type, and anything the dataclass's own validation rejects.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values = dict(preset)
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ConfigError(f"preset has unknown key {unknown[0]!r}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in fields:
            raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(sorted(fields))}")
        values[key] = _coerce(key, text.strip(), hints[key])
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err).splitlines()[0]) from None


def to_json(config: Any) -> str:
    """The resolved config as indented JSON."""
    return json.dumps(dataclasses.asdict(config), indent=1, sort_keys=True)
