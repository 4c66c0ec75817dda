"""Every pass registers itself under its name; ``prunepass passes`` lists them."""
from __future__ import annotations

import difflib
from typing import TypeVar

from prunepass.errors import PipelineError
from prunepass.pm.passes import Pass

REGISTRY: dict[str, type[Pass]] = {}
P = TypeVar("P", bound=type[Pass])


def register(cls: P) -> P:
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a name")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise TypeError(f"pass name {cls.name!r} is taken by {REGISTRY[cls.name].__name__}")
    REGISTRY[cls.name] = cls
    return cls


def lookup(name: str) -> type[Pass]:
    if name not in REGISTRY:
        near = difflib.get_close_matches(name, REGISTRY, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise PipelineError(f"unknown pass {name!r}{hint} (`prunepass passes` lists them)")
    return REGISTRY[name]
