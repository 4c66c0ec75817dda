"""Progress bars: on stderr, and only where a person watches it (a terminal). A log file or
a CI run gets none; PRUNEPASS_PROGRESS=1 (or 0) forces them on (or off)."""
from __future__ import annotations

import os
import sys
from typing import Any


def shown() -> bool:
    forced = os.environ.get("PRUNEPASS_PROGRESS")
    if forced is not None:
        return forced not in ("", "0")
    return sys.stderr.isatty()


def bar(iterable: Any = None, *, enabled: bool = True, **options: Any) -> Any:
    """A tqdm bar over ``iterable`` (or a manual one with ``total=``), drawn only when
    ``enabled`` and someone can see it."""
    from tqdm import tqdm
    return tqdm(iterable, disable=not (enabled and shown()), **options)
