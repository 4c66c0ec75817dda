"""Measured latency of single layers (a 2-D convolution or a linear layer, each followed by a
ReLU) on a backend of this machine, cached on disk.

Hardware-aware channel rounding asks "how long does this layer take with c channels?" for a
few counts around the one a ratio asks for. Whole-model timing per count would cost minutes;
one layer costs milliseconds, and the same layer shapes recur across blocks and models, so a
cache keyed by (backend, threads, CPU, layer) answers most questions without measuring."""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from prunepass.errors import PrunepassError

FORMAT = "prunepass-layer-latency/1"
BACKENDS = ("ort", "torch")


@dataclass(frozen=True)
class LayerSpec:
    """One layer with concrete sizes. conv2d: batch x cin x h x w input, cout kernels of
    kh x kw (cin / groups deep), stride, symmetric padding. linear: rows x cin -> rows x cout."""
    kind: str  # "conv2d" | "linear"
    cin: int
    cout: int
    h: int = 1  # linear: h is the number of rows
    w: int = 1
    kh: int = 1
    kw: int = 1
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    batch: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("conv2d", "linear"):
            raise ValueError(f"layer kind {self.kind!r}: use conv2d or linear")
        if self.cin % self.groups or self.cout % self.groups:
            raise ValueError(f"{self}: channels must be multiples of groups")

    @property
    def key(self) -> str:
        return " ".join(str(v) for v in astuple(self))

    def input_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":
            return (self.batch * self.h, self.cin)
        return (self.batch, self.cin, self.h, self.w)

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(0)
        shape = ((self.cout, self.cin) if self.kind == "linear"
                 else (self.cout, self.cin // self.groups, self.kh, self.kw))
        return (rng.standard_normal(shape, dtype=np.float32),
                rng.standard_normal(self.cout, dtype=np.float32))


def default_cache() -> Path:
    root = os.environ.get("PRUNEPASS_CACHE") or Path.home() / ".cache" / "prunepass"
    return Path(root) / "layer-latency.json"


class LayerLatency:
    """Median latency in ms of layers on ``backend`` ("ort" or "torch") with ``threads``
    intra-op threads (0: the backend's default), measured once per layer and kept in the JSON
    file ``cache`` (None: in memory only)."""

    def __init__(self, backend: str = "ort", threads: int = 0,
                 cache: str | Path | None = "default", repeats: int = 15,
                 number: int = 5) -> None:
        if backend not in BACKENDS:
            raise PrunepassError(f"layer latency backend {backend!r}: use one of "
                                 f"{', '.join(BACKENDS)}")
        self.backend, self.threads = backend, threads
        self.repeats, self.number = repeats, number
        self.cache = default_cache() if cache == "default" else (Path(cache) if cache else None)
        self.table_key = f"{backend} threads={threads} cpu={_cpu_name()}"
        self._table: dict[str, float] = _read(self.cache).get(self.table_key, {})
        self.measured = 0  # layers measured (not read from the cache) by this object

    def __call__(self, spec: LayerSpec) -> float:
        return self.many([spec])[0]

    def many(self, specs: Iterable[LayerSpec]) -> list[float]:
        specs = list(specs)
        missing = [s for s in dict.fromkeys(specs) if s.key not in self._table]
        for s in missing:
            self._table[s.key] = _MEASURE[self.backend](s, self.threads, self.repeats,
                                                        self.number)
            self.measured += 1
        if missing and self.cache is not None:
            data = _read(self.cache)
            data.setdefault(self.table_key, {}).update(self._table)
            _write(self.cache, data)
        return [self._table[s.key] for s in specs]


TIME_BUDGET_S = 0.3  # per layer: large layers get fewer calls, the median stays robust


def _time(fn: Callable[[], Any], repeats: int, number: int) -> float:
    from prunepass.backends.measure.latency import time_repeats
    start = time.perf_counter()
    fn()  # warm-up, and how long one call takes
    once = time.perf_counter() - start
    calls = max(3, min(repeats * number, int(TIME_BUDGET_S / max(once, 1e-6))))
    number = max(1, min(number, calls // 3))
    samples = time_repeats(fn, repeats=max(3, calls // number), number=number, warmup=2)
    return float(np.median(samples) * 1e3)


def _measure_ort(spec: LayerSpec, threads: int, repeats: int, number: int) -> float:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    w, b = spec.weights()
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(spec.input_shape()))
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    if spec.kind == "linear":
        layer = helper.make_node("Gemm", ["x", "w", "b"], ["z"], transB=1)
    else:
        ph, pw = spec.padding
        layer = helper.make_node("Conv", ["x", "w", "b"], ["z"], kernel_shape=[spec.kh, spec.kw],
                                 strides=list(spec.stride), pads=[ph, pw, ph, pw],
                                 group=spec.groups)
    graph = helper.make_graph([layer, helper.make_node("Relu", ["z"], ["y"])], "layer",
                              [x_info], [y_info], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {"x": np.random.default_rng(1).standard_normal(spec.input_shape(), dtype=np.float32)}
    return _time(lambda: session.run(None, feed), repeats, number)


def _measure_torch(spec: LayerSpec, threads: int, repeats: int, number: int) -> float:
    import torch
    w, b = (torch.from_numpy(a) for a in spec.weights())
    x = torch.randn(*spec.input_shape(), generator=torch.Generator().manual_seed(1))
    if spec.kind == "linear":
        def fn() -> Any:
            return torch.relu(torch.nn.functional.linear(x, w, b))
    else:
        def fn() -> Any:
            return torch.relu(torch.nn.functional.conv2d(x, w, b, spec.stride, spec.padding, 1,
                                                         spec.groups))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        with torch.inference_mode():
            return _time(fn, repeats, number)
    finally:
        torch.set_num_threads(previous)


_MEASURE = {"ort": _measure_ort, "torch": _measure_torch}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read(cache: Path | None) -> dict[str, Any]:
    if cache is None or not cache.exists():
        return {}
    try:
        data = json.loads(cache.read_text())
    except ValueError:
        return {}  # unreadable: measured again and rewritten
    return data.get("tables", {}) if data.get("format") == FORMAT else {}


def _write(cache: Path, tables: dict[str, Any]) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "tables": tables}, indent=0) + "\n")
    tmp.replace(cache)  # atomic: a concurrent reader never sees half a table
