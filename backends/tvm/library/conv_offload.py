"""The Relax rewrite for oneDNN builds: channels-last (NHWC) relax.nn.conv2d become calls of
prunepass.blas.dnnl_conv2d (oneDNN's convolution primitive), with what follows each one fused
into the call:

- per-channel constant subtract / add / multiply / divide right after it (an inference batch
  norm, decomposed): folded into the weights and the bias at build time;
- ReLU, ReLU6 and clip (relu, clip, or maximum / minimum by a scalar), sigmoid, and SiLU
  (x * sigmoid(x)): an eltwise post-op;
- the add of another tensor of the output's shape (a residual): a binary post-op, and the
  activation after it.

Weights are packed here into the format oneDNN's kernel for this CPU takes, so a call never
reorders them. Run it after ConvertLayout to NHWC (convert_layout(..., legalize=False)) and
before LegalizeOps."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from prunepass.backends.tvm.dependency import import_tvm
from prunepass.backends.tvm.library.offload import (PREFIX, OffloadReport, _shape, _text,
                                                    _why_not, use_counts)
from prunepass.backends.tvm.rewrite import rewrite_functions

FUNCTION = PREFIX + "dnnl_conv2d"
CLIP, ADD, SWISH, LOGISTIC = 1, 2, 3, 4  # post-op kinds, as dnnl_conv.cc reads them
FLT_MAX = float(np.finfo(np.float32).max)


@dataclass
class _Conv:
    """A convolution being fused: plain weights and bias (numpy), then post-ops."""
    x: Any
    weight: np.ndarray             # (OC, IC, KH, KW), or (G, OC/G, IC/G, KH, KW)
    bias: np.ndarray               # (OC,)
    geometry: list[int]            # strides, pads (t, l, b, r), dilations, groups, kh, kw
    desc: str
    posts: list[tuple[int, float, float]] = field(default_factory=list)
    src1: list[Any] = field(default_factory=list)
    fused: list[str] = field(default_factory=list)

    @property
    def out_channels(self) -> int:
        return int(self.bias.shape[0])


def offload_conv_nhwc(mod: Any, *, report: OffloadReport | None = None) -> Any:
    """Rewrite ``mod``'s static float32 NHWC convolutions (plain or grouped) into
    prunepass.blas.dnnl_conv2d calls with fused post-ops; the oneDNN library kernels must be
    loaded (they pack the weights). Convolutions in another layout or dtype stay in TVM, and
    ``report`` names them."""
    tvm = import_tvm()
    from tvm import relax

    report = report if report is not None else OffloadReport()
    mutator = _mutator_class(tvm, relax)(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.uses = use_counts(relax, func)
            new = mutator.visit_expr(func)
            mutator.builder_.update_func(gv, relax.analysis.remove_all_unused(new))
    report.kept.extend(mutator.kept)
    return _pack_weights(tvm, relax, mutator.builder_.get(), mutator.pending, report)


def _params(conv: _Conv, fmt_hash: int) -> list[int]:
    posts = [v for kind, a, b in conv.posts for v in (kind, _bits(a), _bits(b))]
    return [*conv.geometry, fmt_hash, len(conv.posts), *posts]


def _bits(value: float) -> int:
    return struct.unpack("<I", struct.pack("<f", value))[0]


def _constant(expr: Any) -> np.ndarray | None:
    from tvm.ir.expr import GenericConst
    if not isinstance(expr, GenericConst):
        return None
    return expr.value.numpy()


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """``value`` as OC numbers, if it broadcasts over an NHWC tensor by channel only."""
    if value.dtype != np.float32 or value.ndim > 4:
        return None
    if value.size == 1:
        return np.full(channels, value.reshape(()), np.float32)
    if value.shape[-1] != channels or any(d != 1 for d in value.shape[:-1]):
        return None
    return value.reshape(channels).astype(np.float32)


def _scalar(value: np.ndarray | None) -> float | None:
    if value is None or value.size != 1 or value.dtype != np.float32:
        return None
    return float(value.reshape(()))


_CLASS: list = []


def _mutator_class(tvm: Any, relax: Any) -> type:
    if _CLASS:
        return _CLASS[0]
    stand_in = relax.const(np.zeros(0, np.float32))  # see _emit
    op = tvm.ir.Op.get
    conv2d_op = op("relax.nn.conv2d")
    affine = {op("relax.add"): "add", op("relax.subtract"): "subtract",
              op("relax.multiply"): "multiply", op("relax.divide"): "divide"}
    maximum_op, minimum_op = op("relax.maximum"), op("relax.minimum")
    relu_op, clip_op = op("relax.nn.relu"), op("relax.clip")
    sigmoid_op, silu_op = op("relax.sigmoid"), op("relax.nn.silu")

    @relax.expr_functor.mutator
    class ConvOffload(relax.PyExprMutator):
        def __init__(self, mod: Any):
            super().__init__(mod)
            self.uses: dict = {}
            self.pending: dict = {}  # our call -> _Conv
            self.kept: list[str] = []

        def visit_call_(self, call: Any) -> Any:  # noqa: N802
            new = super().visit_call_(call)
            if not isinstance(new, relax.Call):
                return new
            if new.op == conv2d_op:
                return self._conv2d(call, new)
            if new.op in affine:
                return self._affine(call, new, affine[new.op])
            if new.op in (maximum_op, minimum_op, relu_op, clip_op):
                return self._clip(call, new)
            if new.op in (sigmoid_op, silu_op):
                conv = self._source(call.args[0], new.args[0])
                if conv is None:
                    return new
                kind = (LOGISTIC, 0.0, 0.0) if new.op == sigmoid_op else (SWISH, 1.0, 0.0)
                name = "sigmoid" if new.op == sigmoid_op else "silu"
                return self._emit(replace(conv, posts=[*conv.posts, kind],
                                          fused=[*conv.fused, name]), call.ty)
            return new

        def _source(self, orig_arg: Any, new_arg: Any, uses: int = 1) -> _Conv | None:
            """The convolution ``new_arg`` is the result of, if only ``uses`` calls use it."""
            if not isinstance(new_arg, relax.Var) or self.uses.get(orig_arg, 0) != uses:
                return None
            return self.pending.get(self.lookup_binding(new_arg))

        def _swish(self, orig: Any, new: Any) -> Any | None:
            """multiply(v, sigmoid(v)) of a convolution's result v (used by these two only):
            the convolution with a SiLU post-op (the sigmoid call is then unused)."""
            for i in (0, 1):
                conv = self._source(orig.args[i], new.args[i], uses=2)
                gate = new.args[1 - i]
                if conv is None or not isinstance(gate, relax.Var):
                    continue
                bound = self.lookup_binding(gate)
                if (isinstance(bound, relax.Call) and bound.op == sigmoid_op
                        and bound.args[0].same_as(new.args[i])
                        and self.uses.get(orig.args[1 - i], 0) == 1):
                    return self._emit(replace(conv, posts=[*conv.posts, (SWISH, 1.0, 0.0)],
                                              fused=[*conv.fused, "silu"]), orig.ty)
            return None

        def _emit(self, conv: _Conv, out_ty: Any) -> Any:
            # weights, bias and params stand in until _pack_weights makes them from ``conv``:
            # a call per fused op, so no copy of the weights for each
            args = [conv.x, stand_in, stand_in, *conv.src1, relax.ShapeExpr([])]
            out = relax.call_dps_packed(relax.ExternFunc(FUNCTION), relax.Tuple(args),
                                        out_ty=out_ty)
            self.pending[out] = conv
            return out

        def _conv2d(self, orig: Any, new: Any) -> Any:
            x, w = new.args
            at = new.attrs
            desc = f"{_text(x.ty)}*{_text(w.ty)}"
            reason = next((f"{what} has {r}" for what, ty, rank in
                           (("x", x.ty, 4), ("w", w.ty, 4), ("the result", orig.ty, 4))
                           if (r := _why_not(ty, rank))), None)
            layouts = (str(at.data_layout), str(at.kernel_layout), str(at.out_layout))
            if reason is None and layouts not in (("NHWC", "OHWI", "NHWC"),
                                                  ("NHWC", "HWIO", "NHWC")):
                reason = f"layouts {'/'.join(layouts)} (oneDNN's kernels here take NHWC)"
            if reason is None and at.out_dtype is not None and str(at.out_dtype) not in (
                    "", "void", "float32"):
                reason = f"out_dtype {at.out_dtype}"
            weight = _constant(w) if reason is None else None
            if reason is None and weight is None:
                reason = "the weights are not a constant"
            if reason is not None:
                self.kept.append(f"conv2d {desc}: {reason}")
                return new
            plain = (weight.transpose(0, 3, 1, 2) if layouts[1] == "OHWI"
                     else weight.transpose(3, 2, 0, 1))  # -> OIHW
            groups = int(at.groups)
            oc, icg, kh, kw = plain.shape
            if groups > 1:
                plain = plain.reshape(groups, oc // groups, icg, kh, kw)
            geometry = [*(int(v) for v in at.strides), *(int(v) for v in at.padding),
                        *(int(v) for v in at.dilation), groups, kh, kw]
            stride = "x".join(str(int(v)) for v in at.strides)
            conv = _Conv(x, np.ascontiguousarray(plain, np.float32), np.zeros(oc, np.float32),
                         geometry, f"{_text(x.ty)}*({oc}, {icg}, {kh}, {kw})"
                         f"{f' groups {groups}' if groups > 1 else ''} stride {stride}")
            return self._emit(conv, orig.ty)

        def _affine(self, orig: Any, new: Any, kind: str) -> Any:
            if kind == "multiply":
                swish = self._swish(orig, new)
                if swish is not None:
                    return swish
            for i in (0, 1):
                conv = self._source(orig.args[i], new.args[i])
                if conv is None:
                    continue
                other = new.args[1 - i]
                if _shape(orig.ty) != _shape(new.args[i].ty):
                    return new  # the op broadcasts the result to another shape
                value = _constant(other)
                if value is not None:
                    if conv.posts or (i == 1 and kind in ("subtract", "divide")):
                        return new  # an affine map after an activation, or c - conv, c / conv
                    per = _per_channel(value, conv.out_channels)
                    if per is None:
                        return new
                    return self._emit(_folded(conv, kind, per), orig.ty)
                if (kind == "add" and _why_not(other.ty, 4) is None
                        and _shape(other.ty) == _shape(orig.ty)):
                    return self._emit(replace(conv, posts=[*conv.posts, (ADD, 0.0, 0.0)],
                                              src1=[*conv.src1, other],
                                              fused=[*conv.fused, "add"]), orig.ty)
                return new
            return new

        def _clip(self, orig: Any, new: Any) -> Any:
            conv = self._source(orig.args[0], new.args[0])
            if conv is None:
                return new
            if new.op == relu_op:
                low, high, name = 0.0, FLT_MAX, "relu"
            elif new.op == clip_op:
                low = _scalar(_constant(new.args[1]))
                high = _scalar(_constant(new.args[2]))
                name = "clip"
            else:
                bound = _scalar(_constant(new.args[1]))
                low, high = ((bound, FLT_MAX) if new.op == maximum_op else (-FLT_MAX, bound))
                name = "maximum" if new.op == maximum_op else "minimum"
            if low is None or high is None:
                return new
            posts = list(conv.posts)
            if posts and posts[-1][0] == CLIP and max(low, posts[-1][1]) <= min(high,
                                                                                 posts[-1][2]):
                # two clips in a row are one: clip(clip(x, a, b), c, d) = clip(x, max, min)
                _, a, b = posts.pop()
                low, high = max(low, a), min(high, b)
            posts.append((CLIP, low, high))
            return self._emit(replace(conv, posts=posts, fused=[*conv.fused, name]), orig.ty)

    _CLASS.append(ConvOffload)
    return ConvOffload


def _folded(conv: _Conv, kind: str, per: np.ndarray) -> _Conv:
    """``conv`` followed by a per-channel ``kind`` by ``per``, as new weights and bias."""
    weight, bias = conv.weight, conv.bias
    if kind in ("multiply", "divide"):
        scale = per if kind == "multiply" else (1.0 / per).astype(np.float32)
        shape = ((-1, 1, 1, 1) if weight.ndim == 4
                 else (weight.shape[0], weight.shape[1], 1, 1, 1))
        weight = (weight * scale.reshape(shape)).astype(np.float32)
        bias = (bias * scale).astype(np.float32)
    else:
        bias = (bias + per if kind == "add" else bias - per).astype(np.float32)
    return replace(conv, weight=weight, bias=bias, fused=[*conv.fused, kind])


def _pack_weights(tvm: Any, relax: Any, mod: Any, pending: dict, report: OffloadReport
                  ) -> Any:
    """Each dnnl_conv2d call's plain weights packed for this CPU's oneDNN kernel (the
    extension does it), their format's hash in its params, and a report line."""
    import tvm_ffi
    from prunepass.backends.tvm.errors import LibraryError
    plan = tvm_ffi.get_global_func(PREFIX + "dnnl_conv2d_plan", allow_missing=True)
    pack = tvm_ffi.get_global_func(PREFIX + "dnnl_conv2d_pack", allow_missing=True)
    if plan is None or pack is None:
        raise LibraryError("packing convolution weights needs the oneDNN library kernels "
                           "loaded: prunepass.backends.tvm.library.load_extension("
                           "build_extension(backend='onednn'))")
    dps = tvm.ir.Op.get("relax.call_dps_packed")

    @relax.expr_functor.mutator
    class Pack(relax.PyExprMutator):
        def visit_call_(self, call: Any) -> Any:  # noqa: N802
            new = super().visit_call_(call)
            if not (isinstance(new, relax.Call) and new.op == dps
                    and str(new.args[0].global_symbol) == FUNCTION):
                return new
            conv = pending.get(call)
            if conv is None:  # every call of FUNCTION here was made by ConvOffload
                raise LibraryError(f"internal: a {FUNCTION} call the rewrite did not make")
            x_shape = tvm_ffi.Shape(_shape(conv.x.ty))
            probe = tvm_ffi.Shape(_params(conv, 0))
            floats, fmt_hash, kernel = str(plan(x_shape, conv.out_channels, probe)).split(" ",
                                                                                         2)
            packed = tvm.runtime.tensor(np.zeros(int(floats), np.float32))
            pack(x_shape, tvm.runtime.tensor(conv.weight), probe, packed)
            x, _, _, *src1, _ = new.args[1].fields  # weights, bias, params: stand-ins
            args = [x, relax.const(packed.numpy()), relax.const(conv.bias), *src1,
                    relax.ShapeExpr(_params(conv, int(fmt_hash)))]
            fused = f" +{' +'.join(conv.fused)}" if conv.fused else ""
            report.offloaded.append(f"dnnl_conv2d {conv.desc}{fused} [{kernel}]")
            return relax.call_dps_packed(new.args[0], relax.Tuple(args), out_ty=call.ty)

    return rewrite_functions(mod, Pack)
