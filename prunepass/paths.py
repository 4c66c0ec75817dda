"""Output paths checked before any work: never an input (through symlinks, hard links and
``..``), never a folder where a file is meant, never below a file; a missing parent
folder is created."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from prunepass.errors import PrunepassError


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def check_output(path: str, what: str, inputs: Iterable[str] = (),
                 suffixes: tuple[str, ...] = (), folder: bool = False) -> Path:
    """The output ``path`` (``what`` names the option in messages), its parent created.
    ``suffixes``: the file name must end with one of them. ``folder``: a folder is meant."""
    p = Path(path).expanduser()
    for src in inputs:
        if src and _same(p, Path(src)):
            raise PrunepassError(f"{what} {path!r} is the input {src!r}: choose another name")
    for parent in [p, *p.parents] if folder else p.parents:
        if parent.exists() and not parent.is_dir():
            raise PrunepassError(f"{what} {path!r}: {str(parent)!r} is a file, not a folder")
    if not folder:
        if p.is_dir():
            raise PrunepassError(f"{what} {path!r} is a folder: name a file in it")
        if suffixes and p.suffix not in suffixes:
            raise PrunepassError(f"{what} {path!r}: use a file name ending in "
                                 + " or ".join(suffixes))
    try:
        (p if folder else p.parent).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PrunepassError(f"{what} {path!r}: cannot create its folder ({e.strerror})") \
            from None
    return p


def check_outputs(outputs: dict[str, tuple[str | None, tuple[str, ...], bool]],
                  inputs: Iterable[str]) -> None:
    """Every output option of one command: each checked, and no two the same file."""
    inputs = [i for i in inputs if i]
    given = {what: v for what, v in outputs.items() if v[0]}
    for what, (path, suffixes, folder) in given.items():
        check_output(path, what, inputs, suffixes, folder)
    names = list(given)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if _same(Path(given[a][0]), Path(given[b][0])):
                raise PrunepassError(f"{a} and {b} name the same file {given[a][0]!r}")
