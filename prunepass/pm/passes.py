"""Pass, AnalysisPass, TransformPass and PreservedAnalyses.

A pass has a registered name, typed options and ``run(graph, am)``. An analysis returns a
result that the AnalysisManager caches; a transform changes the model through
``am.model`` (the frontend adapter) and returns which analyses stay valid."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from prunepass.errors import PipelineError
from prunepass.pm.options import Option, format_value


@dataclass
class PreservedAnalyses:
    keep_all: bool = False
    names: frozenset[str] = frozenset()

    @classmethod
    def all(cls) -> "PreservedAnalyses":
        return cls(keep_all=True)

    @classmethod
    def none(cls) -> "PreservedAnalyses":
        return cls()

    @classmethod
    def only(cls, *names: str) -> "PreservedAnalyses":
        return cls(names=frozenset(names))

    def preserves(self, name: str) -> bool:
        return self.keep_all or name in self.names


@dataclass
class TransformResult:
    preserved: PreservedAnalyses
    changes: dict[str, Any] = field(default_factory=dict)  # goes into the run record


class Pass:
    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()

    def __init__(self, **opts: Any) -> None:
        self.opts: dict[str, Any] = {}
        known = {o.name: o for o in self.options}
        for key, value in opts.items():
            key = key.replace("_", "-")
            if key not in known:
                valid = ", ".join(known) or "none"
                raise PipelineError(f"pass {self.name!r} has no option {key!r} "
                                    f"(options: {valid})")
            self.opts[key] = known[key].convert(value, self.name)
        self.opts = {o.name: self.opts.get(o.name, o.default) for o in self.options}

    def __getitem__(self, key: str) -> Any:
        return self.opts[key]

    def non_default(self) -> dict[str, Any]:
        return {o.name: self.opts[o.name] for o in self.options
                if self.opts[o.name] != o.default}

    def text(self, full: bool = False) -> str:
        """This pass in pipeline syntax: ``prune-channels<ratio=0.3>``; ``full``: every
        option, defaults included."""
        opts = self.opts if full else self.non_default()
        if not opts:
            return self.name
        return f"{self.name}<{','.join(f'{k}={format_value(v)}' for k, v in opts.items())}>"

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def __repr__(self) -> str:
        return self.text()

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.opts == other.opts  # type: ignore[attr-defined]


class AnalysisPass(Pass):
    kind = "analysis"

    def run(self, graph, am) -> Any:  # noqa: ANN001
        raise NotImplementedError


class TransformPass(Pass):
    kind = "transform"

    def run(self, graph, am) -> TransformResult:  # noqa: ANN001
        raise NotImplementedError


class PipelinePass(Pass):
    """A named pipeline, as LLVM's ``default<O2>``: a name with options that expands to
    small passes when parsed. Its options may be many; each small pass keeps few."""
    kind = "pipeline"

    def expand(self) -> list[Pass]:
        raise NotImplementedError


def expand(passes: list[Pass]) -> list[Pass]:
    """Named pipelines replaced by the passes they stand for."""
    out: list[Pass] = []
    for p in passes:
        out.extend(expand(p.expand()) if isinstance(p, PipelinePass) else [p])
    return out
