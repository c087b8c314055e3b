"""The method registry: one line per method, the module whose ``METHOD`` is its
:class:`methods.spec.MethodSpec`.

Adding a method: its folder under ``methods/`` (a task, a config, presets and a ``METHOD``) and
one line below. A module elsewhere can :func:`register` a method and be named in the
``TSPIPE_PLUGINS`` environment variable (as for schedules), so launched workers see it too.
"""

from __future__ import annotations

import importlib

from core.schedules import load_plugins
from methods.spec import MethodSpec

METHODS: dict[str, str] = {
    "byol": "methods.byol",
    "moco_v3": "methods.moco_v3",
    "soft_target": "methods.soft_target",
    "distilbert": "methods.distilbert",
    "synthetic": "methods.synthetic",
}
_REGISTERED: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method defined outside ``methods/`` (tests, plugins)."""
    _REGISTERED[spec.name] = spec
    return spec


def method_names() -> list[str]:
    """Every method's name: the registry's, then registered ones."""
    load_plugins()
    return [*METHODS, *(n for n in _REGISTERED if n not in METHODS)]


def get_method(name: str) -> MethodSpec:
    """The spec of method ``name`` (its module is imported on first use).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    load_plugins()
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(method_names())}")
    return importlib.import_module(METHODS[name]).METHOD
