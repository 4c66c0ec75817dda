"""Typed pass options: parsed from pipeline text or given from Python, checked the same way."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable

from prunepass.errors import PipelineError


@dataclass(frozen=True)
class Option:
    name: str
    type: type  # float, int, bool, str or list (of str)
    default: Any
    doc: str
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = None  # returns a complaint or None

    def describe_type(self) -> str:
        if self.choices:
            return "|".join(self.choices)
        return {float: "float", int: "int", bool: "bool", str: "str", list: "list"}[self.type]

    def convert(self, value: Any, owner: str) -> Any:
        """Coerce ``value`` (text from a pipeline or a Python value) to this option's type."""
        where = f"option {self.name!r} of pass {owner!r}"
        try:
            if self.type is bool:
                if isinstance(value, str):
                    low = value.lower()
                    if low not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(value)
                    value = low in ("true", "1", "yes")
                elif not isinstance(value, bool):
                    raise ValueError(value)
            elif self.type is list:
                if isinstance(value, str):
                    body = value.strip()
                    body = body[1:-1] if body.startswith("[") and body.endswith("]") else body
                    if "[" in body or "]" in body:
                        raise PipelineError(f"{where}: lists do not nest, got {value!r}")
                    value = [s.strip() for s in body.split(",") if s.strip()]
                elif isinstance(value, (list, tuple)):
                    value = [str(s) for s in value]
                else:
                    raise ValueError(value)
            elif self.type is float:
                if isinstance(value, bool):
                    raise ValueError(value)
                value = float(value)
            elif self.type is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError(value)
                value = int(str(value)) if isinstance(value, str) else int(value)
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise PipelineError(f"{where} expects {self.describe_type()}, got {value!r}") from None
        if self.choices and value not in self.choices:
            raise PipelineError(f"{where} must be one of {', '.join(self.choices)}; "
                                f"got {value!r}")
        if self.check is not None:
            complaint = self.check(value)
            if complaint:
                raise PipelineError(f"{where} {complaint}, got {value!r}")
        return value


def format_value(v: Any) -> str:
    """An option value in pipeline syntax: [a,b] for lists, true/false for bools."""
    if isinstance(v, list):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v).lower() if isinstance(v, bool) else str(v)


def matches_any(name: str, patterns: list[str]) -> bool:
    """What an ``ignore`` option means: ``name`` matches a pattern by fnmatch, is it, or
    lies under it as a dotted prefix."""
    return any(fnmatch.fnmatch(name, p) or name.startswith(p + ".") or name == p
               for p in patterns)


def in_range(lo: float, hi: float, hi_open: bool = True) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok = lo <= v < hi if hi_open else lo <= v <= hi
        return None if ok else f"must be in [{lo}, {hi}{')' if hi_open else ']'}"
    return check


def at_least(lo: int) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"must be >= {lo}"
