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
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from prunepass.progress import bar

from prunepass.errors import PrunepassError

FORMAT = "prunepass-layer-latency/1"
BACKENDS = ("ort", "torch", "tvm")
SAVE_EVERY_S = 10.0  # while measuring, the cache is written at least this often


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

    def torch_module(self) -> tuple[Any, tuple[Any, ...]]:
        """The layer with its ReLU as a torch module (for compilers that take one), and an
        input for it."""
        import torch
        from torch import nn
        w, b = (torch.from_numpy(a) for a in self.weights())
        if self.kind == "linear":
            layer = nn.Linear(self.cin, self.cout)
        else:
            layer = nn.Conv2d(self.cin, self.cout, (self.kh, self.kw), self.stride,
                              self.padding, groups=self.groups)
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.bias.copy_(b)
        x = torch.randn(*self.input_shape(), generator=torch.Generator().manual_seed(1))
        return nn.Sequential(layer, nn.ReLU()).eval(), (x,)


def default_cache() -> Path:
    root = os.environ.get("PRUNEPASS_CACHE") or Path.home() / ".cache" / "prunepass"
    return Path(root) / "layer-latency.json"


@dataclass(frozen=True)
class BlockSpec:
    """Layers timed together, as they sit around one channel group in a network: the
    producers' outputs (``c`` channels each) are summed, pass through the chain (depthwise
    layers, c -> c), and every consumer reads the result. A layer whose input does not have
    the block tensor's shape reads its own input instead. Timing the layers together keeps
    what timing them alone misses: onnxruntime stores a tensor whose channels fill its
    kernels' blocks in a blocked layout that both neighbours use, and converts one that
    does not (measured here: resnet50 pruned to counts like 129 and 258, which layers timed
    alone found as fast as 128 and 256, ran 1.33x slower in onnxruntime than at 128, 256)."""
    producers: tuple[LayerSpec, ...] = ()
    chain: tuple[LayerSpec, ...] = ()
    consumers: tuple[LayerSpec, ...] = ()

    @property
    def key(self) -> str:
        if not self.chain and not self.consumers and len(self.producers) == 1:
            return self.producers[0].key  # a layer alone: the LayerSpec's own key
        return " | ".join(",".join(s.key for s in part) for part in
                          (self.producers, self.chain, self.consumers))

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        return self.producers + self.chain + self.consumers


def _block(spec: LayerSpec | BlockSpec) -> BlockSpec:
    return spec if isinstance(spec, BlockSpec) else BlockSpec(producers=(spec,))


def _output_shape(s: LayerSpec) -> tuple[int, ...]:
    if s.kind == "linear":
        return (s.batch * s.h, s.cout)
    oh = (s.h + 2 * s.padding[0] - s.kh) // s.stride[0] + 1
    ow = (s.w + 2 * s.padding[1] - s.kw) // s.stride[1] + 1
    return (s.batch, s.cout, oh, ow)


def block_program(block: BlockSpec) -> tuple[list[tuple[str, LayerSpec, str]], list[str],
                                              dict[str, tuple[int, ...]]]:
    """The block as steps (input name, layer, output name), the outputs, and the graph
    inputs with their shapes. The sum of the producers is named "t0"; the chain runs from it;
    consumers read its end."""
    steps: list[tuple[str, LayerSpec, str]] = []
    inputs: dict[str, tuple[int, ...]] = {}
    outputs: list[str] = []

    def source(s: LayerSpec, tensor: str | None, shape: tuple[int, ...] | None) -> str:
        if tensor is not None and shape == s.input_shape():
            return tensor
        name = f"x{len(inputs)}"
        inputs[name] = s.input_shape()
        return name

    tensor, shape, summed = None, None, []
    for i, s in enumerate(block.producers):
        out = f"p{i}"
        steps.append((source(s, None, None), s, out))
        if shape is None or _output_shape(s) == shape:
            shape = _output_shape(s)
            summed.append(out)
        else:
            outputs.append(out)  # another shape: not coupled through a sum here
    if summed:
        tensor = summed[0] if len(summed) == 1 else "t0"
    for i, s in enumerate(block.chain):
        out = f"d{i}"
        steps.append((source(s, tensor, shape), s, out))
        tensor, shape = out, _output_shape(s)
    if not block.consumers and tensor is not None:
        outputs.append(tensor)
    for i, s in enumerate(block.consumers):
        out = f"c{i}"
        steps.append((source(s, tensor, shape), s, out))
        outputs.append(out)
    if len(summed) > 1:
        steps.insert(len(block.producers), ("+".join(summed), None, "t0"))  # type: ignore[arg-type]
    return steps, outputs, inputs


class LayerLatency:
    """Median latency in ms of layers (LayerSpec) or blocks of layers (BlockSpec) on
    ``backend`` ("ort", "torch" or "tvm": compiled for this CPU) with ``threads`` intra-op
    threads (0: the backend's default), measured once and kept in the JSON file ``cache``
    (None: in memory only). ``trials``: tvm only, MetaSchedule trials per kernel before
    timing (0: untuned, the default schedules)."""

    def __init__(self, backend: str = "ort", threads: int = 0,
                 cache: str | Path | None = "default", repeats: int = 15,
                 number: int = 5, trials: int = 0) -> None:
        if backend not in BACKENDS:
            raise PrunepassError(f"layer latency backend {backend!r}: use one of "
                                 f"{', '.join(BACKENDS)}")
        self.backend, self.threads = backend, threads
        self._tune: Callable[[list[BlockSpec]], None] | None = None  # tvm: tunes blocks at once
        self.repeats, self.number = repeats, number
        self.cache = default_cache() if cache == "default" else (Path(cache) if cache else None)
        self.table_key = f"{backend} threads={threads} cpu={_cpu_name()}"
        if backend == "tvm":
            set_tvm_threads(threads)
            self.table_key += f" trials={trials}"
            self._measure: Callable[..., float] = partial(_measure_tvm, trials=trials)
            if trials:
                self._tune = partial(_tune_tvm, trials=trials)
        elif trials:
            raise PrunepassError(f"trials are for the tvm backend; {backend} has no tuning")
        else:
            self._measure = _MEASURE[backend]
        self._table: dict[str, float] = _read(self.cache).get(self.table_key, {})
        self.measured = 0  # entries measured (not read from the cache) by this object

    def __call__(self, spec: LayerSpec | BlockSpec) -> float:
        return self.many([spec])[0]

    def many(self, specs: Iterable[LayerSpec | BlockSpec]) -> list[float]:
        specs = list(specs)
        missing = [s for s in dict.fromkeys(specs) if s.key not in self._table]
        slow = self.backend == "tvm"  # seconds per entry: show them, save each
        if self._tune is not None and len(missing) > 1:
            self._tune([_block(s) for s in missing])  # then each build finds its schedules
        saved = time.monotonic()
        for i, s in enumerate(bar(missing, desc=f"timing layers on {self.backend}",
                                  unit="layer", enabled=slow and len(missing) >= 2,
                                  leave=False)):
            self._table[s.key] = self._measure(_block(s), self.threads, self.repeats,
                                               self.number)
            self.measured += 1
            if i + 1 == len(missing) or time.monotonic() - saved > SAVE_EVERY_S:
                self._save()  # an interrupted run keeps what it measured
                saved = time.monotonic()
        return [self._table[s.key] for s in specs]

    def _save(self) -> None:
        if self.cache is not None:
            data = _read(self.cache)
            data.setdefault(self.table_key, {}).update(self._table)
            _write(self.cache, data)


TIME_BUDGET_S = 0.3  # per entry: large layers get fewer calls, the median stays robust


def _time(fn: Callable[[], Any], repeats: int, number: int) -> float:
    from prunepass.backends.measure.latency import time_repeats
    start = time.perf_counter()
    fn()  # warm-up, and how long one call takes
    once = time.perf_counter() - start
    calls = max(3, min(repeats * number, int(TIME_BUDGET_S / max(once, 1e-6))))
    number = max(1, min(number, calls // 3))
    samples = time_repeats(fn, repeats=max(3, calls // number), number=number, warmup=2)
    return float(np.median(samples) * 1e3)


def _feed(inputs: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {k: rng.standard_normal(shape, dtype=np.float32) for k, shape in inputs.items()}


def block_onnx(block: BlockSpec) -> tuple[Any, dict[str, tuple[int, ...]]]:
    """The block as an ONNX model (each layer a Conv or Gemm with its bias, then a Relu),
    and its inputs with their shapes."""
    from onnx import TensorProto, helper, numpy_helper
    steps, outputs, inputs = block_program(block)
    nodes, inits, shapes = [], [], {}
    for i, (src, s, out) in enumerate(steps):
        if s is None:  # the producers' sum
            nodes.append(helper.make_node("Sum", src.split("+"), [out]))
            shapes[out] = shapes[src.split("+")[0]]
            continue
        shapes[out] = _output_shape(s)
        w, b = s.weights()
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        if s.kind == "linear":
            nodes.append(helper.make_node("Gemm", [src, f"w{i}", f"b{i}"], [f"z{i}"], transB=1))
        else:
            ph, pw = s.padding
            nodes.append(helper.make_node(
                "Conv", [src, f"w{i}", f"b{i}"], [f"z{i}"], kernel_shape=[s.kh, s.kw],
                strides=list(s.stride), pads=[ph, pw, ph, pw], group=s.groups))
        nodes.append(helper.make_node("Relu", [f"z{i}"], [out]))
    graph = helper.make_graph(
        nodes, "block",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v)) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(shapes[o])) for o in outputs],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), inputs


def _measure_ort(block: BlockSpec, threads: int, repeats: int, number: int) -> float:
    import onnxruntime as ort
    model, inputs = block_onnx(block)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = _feed(inputs)
    return _time(lambda: session.run(None, feed), repeats, number)


def _measure_tvm(block: BlockSpec, threads: int, repeats: int, number: int, *,
                 trials: int) -> float:
    """The block compiled by TVM for this CPU from its ONNX form and timed like the other
    backends. With ``trials``, each kernel is first tuned with that many MetaSchedule trials
    into tvm_database(), which a model compiled later with that database reuses for any
    kernel it shares (the same fused workload and shapes)."""
    import tempfile
    from prunepass.backends.tvm.compile import compile_model
    model, inputs = block_onnx(block)
    with tempfile.TemporaryDirectory(prefix="prunepass-layer-") as tmp:
        compiled = compile_model(model, None, "x86", tmp, max_trials_per_task=trials or None,
                                 database=tvm_database() if trials else None,
                                 route="onnx", progress=False)
        loaded = compiled.load()
        args = loaded.to_device(list(_feed(inputs).values()))
        main = loaded.vm["main"]
        return _time(lambda: main(*args), repeats, number)


def _tune_tvm(blocks: list[BlockSpec], *, trials: int) -> None:
    """Tune the kernels of all ``blocks`` in one MetaSchedule call into tvm_database(): its
    start (task contexts, builder and runner pools, the cost model) costs seconds, as much as
    a small kernel's trials, and the candidate counts of a group are timed together."""
    from prunepass.backends.tvm.compile import prepare
    from prunepass.backends.tvm.lower import lower_model
    from prunepass.backends.tvm.targets import resolve_target
    from prunepass.backends.tvm.tune import tune_model
    spec = resolve_target("x86")
    mods = [prepare(lower_model(block_onnx(b)[0], None, "onnx").mod, spec) for b in blocks]
    tune_model(mods, spec, tvm_database(), trials=0, max_trials_per_task=trials)


def set_tvm_threads(threads: int) -> None:
    """TVM's runtime takes its thread count from TVM_NUM_THREADS when its pool starts: set it
    (0: leave TVM's default), or fail if it was set to another count."""
    if not threads:
        return
    have = os.environ.get("TVM_NUM_THREADS")
    if have is None:
        os.environ["TVM_NUM_THREADS"] = str(threads)
    elif have != str(threads):
        raise PrunepassError(f"TVM_NUM_THREADS={have} but {threads} threads were asked for; "
                             "TVM's runtime reads it once: set it before starting")


def tvm_database() -> Path:
    """Where layer timings on TVM keep their tuning records (beside the latency cache)."""
    return default_cache().parent / "tvm-tuning"


def _measure_torch(block: BlockSpec, threads: int, repeats: int, number: int) -> float:
    import torch
    import torch.nn.functional as F
    steps, outputs, inputs = block_program(block)
    params = [None if s is None else tuple(torch.from_numpy(a) for a in s.weights())
              for _, s, _ in steps]
    feed = {k: torch.from_numpy(v) for k, v in _feed(inputs).items()}

    def fn() -> Any:
        env = dict(feed)
        for (src, s, out), p in zip(steps, params):
            if s is None:
                env[out] = sum(env[n] for n in src.split("+"))
            elif s.kind == "linear":
                env[out] = torch.relu(F.linear(env[src], *p))
            else:
                env[out] = torch.relu(F.conv2d(env[src], *p, s.stride, s.padding, 1, s.groups))
        return [env[o] for o in outputs]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        with torch.inference_mode():
            return _time(fn, repeats, number)
    finally:
        torch.set_num_threads(previous)


_MEASURE = {"ort": _measure_ort, "torch": _measure_torch}  # tvm: _measure_tvm with its trials


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
