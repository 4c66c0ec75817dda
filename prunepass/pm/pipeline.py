"""Pipeline text <-> passes.

    pipeline := item (',' item)*
    item     := NAME ('<' option (',' option)* '>')?
    option   := KEY '=' VALUE          VALUE may be a [bracketed, list]
"""
from __future__ import annotations

import re

from prunepass.errors import PipelineError
from prunepass.pm.passes import Pass, expand
from prunepass.pm.registry import lookup

_NAME = re.compile(r"[a-z][a-z0-9-]*\Z")


def _split_top(text: str, sep: str, where: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for i, ch in enumerate(text):
        if ch in "<[":
            depth += 1
        elif ch in ">]":
            depth -= 1
            if depth < 0:
                raise PipelineError(f"pipeline syntax error at column {i + 1} of {where!r}: "
                                    f"unmatched {ch!r}")
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth != 0:
        raise PipelineError(f"pipeline syntax error in {where!r}: unclosed '<' or '['")
    parts.append(cur)
    return parts


def parse_item(item: str, full: str) -> Pass:
    item = item.strip()
    if not item:
        raise PipelineError(f"pipeline syntax error in {full!r}: empty pass name "
                            "(a stray comma?)")
    name, opts = item, {}
    if "<" in item:
        if not item.endswith(">"):
            raise PipelineError(f"pipeline syntax error in {item!r}: options must end with '>'")
        name, body = item[:-1].split("<", 1)
        name = name.strip()
        for opt in _split_top(body, ",", item):
            if not opt.strip():
                continue
            if "=" not in opt:
                raise PipelineError(f"pipeline syntax error in {item!r}: option {opt.strip()!r} "
                                    "needs the form key=value")
            key, value = (x.strip() for x in opt.split("=", 1))
            if key in opts:
                raise PipelineError(f"pipeline {item!r}: option {key!r} is given twice")
            opts[key] = value
    if not _NAME.match(name):
        raise PipelineError(f"pipeline syntax error in {full!r}: {name!r} is not a pass name")
    return lookup(name)(**opts)


def parse_pipeline(text: str) -> list[Pass]:
    if not text or not text.strip():
        raise PipelineError("empty pipeline: give passes like 'fold-bn,prune-channels<ratio=0.5>'")
    return expand([parse_item(item, text) for item in _split_top(text, ",", text)])


def format_pipeline(passes: list[Pass], full: bool = False) -> str:
    """Pipeline text; ``full``: every option of every pass, defaults included."""
    return ",".join(p.text(full) for p in passes)
