"""Typed values for frozen config dataclasses: ``key=value`` overrides (dotted keys reach
nested sections), and a JSON round trip that gives back the same types.

``apply_overrides(config, ["pipeline.schedule=tspipe", "lr=0.1"])`` returns a new config: each
value is converted to its field's declared type (``int``, ``float``, ``bool``, ``str``,
``X | None`` with ``none``, ``tuple[int, ...]`` from ``2,3``); a bare key is looked up in every
section and must name exactly one field.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from typing import Any


class ConfigError(ValueError):
    """A config the user must fix; the message is one line saying what to change."""


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(name: str, text: str, annotation: Any) -> Any:
    """Convert an override string to the field's declared type.

    Raises:
        ConfigError: if ``text`` does not read as that type.
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", "") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(name, text, inner[0])
    if origin is tuple:
        items = [s for s in text.strip("()[]").split(",") if s.strip()]
        return tuple(coerce(name, s.strip(), args[0]) for s in items)
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


def _sections(config: Any) -> dict[str, Any]:
    """The nested dataclass fields of ``config`` (its sections), by name."""
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if dataclasses.is_dataclass(getattr(config, f.name))
    }


def _locate(config: Any, key: str) -> tuple[list[str], str]:
    """(path of sections, field) an override key names.

    Raises:
        ConfigError: for an unknown or ambiguous key, listing what is known.
    """
    parts = key.split(".")
    target = config
    for part in parts[:-1]:
        sections = _sections(target)
        if part not in sections:
            raise ConfigError(f"unknown config section {part!r} in {key!r}; sections: {', '.join(sections)}")
        target = sections[part]
    field = parts[-1]
    names = {f.name for f in dataclasses.fields(target)}
    if field in names and not dataclasses.is_dataclass(getattr(target, field)):
        return parts[:-1], field
    if len(parts) == 1:  # a bare key: search the sections
        found = [
            name
            for name, section in _sections(config).items()
            if field in {f.name for f in dataclasses.fields(section)}
        ]
        if len(found) == 1:
            return found, field
        if len(found) > 1:
            raise ConfigError(
                f"config key {field!r} is ambiguous; write one of: {', '.join(f'{s}.{field}' for s in found)}"
            )
    known = sorted(
        f"{name}.{f.name}" for name, section in _sections(config).items() for f in dataclasses.fields(section)
    ) or sorted(names)
    raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(known)}")


def apply_overrides(config: Any, items: Sequence[str]) -> Any:
    """``config`` with ``key=value`` overrides applied (see the module docstring).

    Raises:
        ConfigError: for malformed items, unknown keys, values of the wrong type, and anything
            the dataclasses' own validation rejects (first line of its message).
    """
    changes: dict[tuple[str, ...], dict[str, Any]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        path, field = _locate(config, key.strip().replace("-", "_"))
        target = config
        for part in path:
            target = getattr(target, part)
        value = coerce(key.strip(), text.strip(), _hints(type(target))[field])
        changes.setdefault(tuple(path), {})[field] = value
    try:
        return _replace(config, (), changes)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err).splitlines()[0]) from None


def _replace(obj: Any, path: tuple[str, ...], changes: dict[tuple[str, ...], dict[str, Any]]) -> Any:
    nested = {
        name: _replace(section, (*path, name), changes)
        for name, section in _sections(obj).items()
        if any(p[: len(path) + 1] == (*path, name) for p in changes)
    }
    values = {**changes.get(path, {}), **nested}
    return dataclasses.replace(obj, **values) if values else obj


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config (JSON-ready)."""
    return dataclasses.asdict(config)


def to_json(config: Any) -> str:
    """The resolved config as indented JSON."""
    return json.dumps(to_dict(config), indent=1, sort_keys=True)


def from_dict(cls: type, data: dict[str, Any], classes: dict[str, type] | None = None) -> Any:
    """Rebuild a config dataclass from :func:`to_dict`'s output, lists back to tuples.

    Args:
        cls: the dataclass.
        data: its dict.
        classes: classes of fields annotated loosely (``Any``), by field name.
    """
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        sub = (classes or {}).get(f.name) or (hint if dataclasses.is_dataclass(hint) else None)
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value)
        elif isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return cls(**values)
