"""Hardware-aware channel counts: the measured latency of one representative layer across
output-channel counts on a target, cached on disk, and the counts worth pruning to (those no
larger count beats).

Latency is not monotonic in channels: vector widths, tiling and cache blocking make some
counts as fast as smaller ones. A pruner that rounds to the counts on the "staircase" keeps
accuracy that costs no time. Untuned CPU builds have no real schedule, so tables meant to
guide pruning should be measured with trials; the tuning records stay in the database, so
measuring the same shapes again (another sweep, or the model itself) reuses them."""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from prunepass.backends.measure.latency import LatencyStats
from prunepass.backends.measure.layer_latency import LayerSpec
from prunepass.backends.tvm.compile import compile_model
from prunepass.backends.tvm.measure import measure_compiled
from prunepass.backends.tvm.rpc import RPCTracker
from prunepass.backends.tvm.targets import TargetSpec, resolve_target
from prunepass.passes.analysis.channel_latency import staircase as latency_staircase

FORMAT = "prunepass-channel-table/1"


@dataclass(frozen=True)
class LayerShape:
    """A representative layer swept over its output channels: a k x k convolution (padding
    k // 2) on size x size inputs, or a linear layer (kind "linear": size is the number of
    rows). ``spec(count)`` is the concrete layer (the LayerSpec that hw-round times)."""
    kind: str            # "conv2d" | "linear"
    in_channels: int
    size: int
    kernel: int = 3
    stride: int = 1
    batch: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("conv2d", "linear"):
            raise ValueError(f"layer kind {self.kind!r}: use conv2d or linear")

    @property
    def key(self) -> str:
        if self.kind == "linear":
            return f"linear in{self.in_channels} rows{self.batch * self.size}"
        return (f"conv2d k{self.kernel} s{self.stride} in{self.in_channels} "
                f"{self.size}x{self.size} n{self.batch}")

    def spec(self, out_channels: int) -> LayerSpec:
        """This layer with ``out_channels`` outputs."""
        if self.kind == "linear":
            return LayerSpec("linear", self.in_channels, out_channels,
                             h=self.batch * self.size)
        pad = self.kernel // 2
        return LayerSpec("conv2d", self.in_channels, out_channels, self.size, self.size,
                         self.kernel, self.kernel, (self.stride,) * 2, (pad, pad),
                         batch=self.batch)

    def module(self, out_channels: int) -> tuple[Any, tuple[Any, ...]]:
        """The layer (with a ReLU, as in most networks) and an input for it."""
        return self.spec(out_channels).torch_module()


def channel_latency_table(shape: LayerShape, channels: Sequence[int],
                          target: str | TargetSpec = "x86", *, cache: str | Path,
                          trials_per_kernel: int = 0, database: str | Path | None = None,
                          repeats: int = 10, number: int = 3, warmup: int = 2,
                          rpc: RPCTracker | None = None) -> dict[int, LatencyStats]:
    """Latency of ``shape`` for each output-channel count, measured on ``target`` (here, or
    on the device behind ``rpc``). Entries already in the JSON file ``cache`` for this target,
    shape and tuning budget are read, not measured again; new ones are added to it."""
    spec = target if isinstance(target, TargetSpec) else resolve_target(target)
    cache = Path(cache)
    if trials_per_kernel and database is None:
        database = cache.parent / "tuning"  # kept: the next sweep reuses the measurements
    data = _read(cache)
    entries = data["tables"].setdefault(spec.key, {}).setdefault(
        f"{shape.key} trials{trials_per_kernel}", {})
    for count in channels:
        if str(count) in entries:
            continue
        model, x = shape.module(count)
        with tempfile.TemporaryDirectory(prefix="prunepass-channels-") as tmp:
            compiled = compile_model(model, x, spec, tmp, trials=0,
                                     max_trials_per_task=trials_per_kernel or None,
                                     database=database, rpc=rpc, progress=False)
            stats = measure_compiled(compiled, x, repeats=repeats, number=number,
                                     warmup=warmup, rpc=rpc)
        entries[str(count)] = asdict(stats)
        _write(cache, data)  # after each count: an interrupted sweep keeps what it measured
    return {count: _stats(entries[str(count)]) for count in channels}


def staircase(table: dict[int, LatencyStats], tolerance: float = 0.0) -> list[int]:
    """The channel counts worth keeping: those faster than every larger count by more than
    ``tolerance`` (a fraction of the median)."""
    return latency_staircase({c: s.median_ms for c, s in table.items()}, tolerance)


def _stats(entry: dict[str, Any]) -> LatencyStats:
    return LatencyStats(**{**entry, "samples_ms": tuple(entry["samples_ms"])})


def _read(cache: Path) -> dict[str, Any]:
    if cache.exists():
        try:
            data = json.loads(cache.read_text())
            if data.get("format") == FORMAT:
                return data
        except ValueError:
            pass  # unreadable: measured again and rewritten below
    return {"format": FORMAT, "tables": {}}


def _write(cache: Path, data: dict[str, Any]) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(cache.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(cache)  # atomic: a reader never sees half a table
