"""Data layouts for convolutions: the layout the model was written in (NCHW), channels last
(NHWC), or channel blocks (NCHW[x]c with OIHW[x]i[y]o weights, the layout onnxruntime's and
TVM's classic x86 kernels use: the innermost axis is a vector of output channels).

Relax's ConvertLayout rewrites each convolution and carries the layout through the
elementwise ops, pools and concatenations after it, so layout transforms are left only at
the model's edges and where an op cannot take the layout. The weights' transforms are
constant and folded at build time. Relax's LegalizeOps has no rule for blocked convolutions;
``legalize_blocked`` gives them TOPI's conv2d_NCHWc and a depthwise one of its own.

A convolution the layout does not suit stays as it was, and the report names it: grouped
convolutions that are not depthwise (no blocked TOPI kernel), and channel counts whose only
block is 1 (no vector to fill)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prunepass.backends.tvm.rewrite import rewrite_functions

LAYOUTS = ("nchw", "nhwc", "nchwc")
CONV = "relax.nn.conv2d"


@dataclass
class LayoutReport:
    """What the layout conversion did to a module."""
    layout: str                                         # the layout asked for
    converted: int = 0                                  # convolutions in that layout
    kept: list[str] = field(default_factory=list)       # convolutions left in NCHW, and why
    edge_transforms: int = 0                            # layout transforms left on activations

    def summary(self) -> str:
        kept = f", {len(self.kept)} kept in NCHW" if self.kept else ""
        return (f"layout {self.layout}: {self.converted} convolution(s) converted{kept}, "
                f"{self.edge_transforms} activation layout transform(s)")


def channel_block(channels: int, lanes: int) -> int:
    """The largest block of ``channels`` that fits a vector of ``lanes`` floats."""
    return max(b for b in range(1, lanes + 1) if channels % b == 0)


def convert_layout(mod: Any, layout: str, lanes: int, *, legalize: bool = True,
                   grouped: bool = False) -> tuple[Any, LayoutReport]:
    """``mod`` with its 2-D convolutions in ``layout`` ("nchw": unchanged, "nhwc", "nchwc"),
    legalized where Relax cannot, weights transformed; ``lanes``: float32 lanes of the
    target's vectors (16 with AVX-512, 8 with AVX2, 4 with NEON or SSE). legalize=False
    leaves the operators high-level (for a rewrite that matches them; NHWC and NCHW only:
    the build's LegalizeOps has no rule for channel blocks). grouped=True converts grouped
    convolutions to NHWC too (for oneDNN's kernels, which take them; TVM's are not used)."""
    import tvm
    from tvm import relax

    report = LayoutReport(layout)
    if layout not in LAYOUTS:
        from prunepass.backends.tvm.errors import TargetError
        raise TargetError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if layout == "nchw":
        report.converted = _count_convs(mod)
        return mod, report
    if not legalize and layout == "nchwc":
        from prunepass.backends.tvm.errors import TargetError
        raise TargetError("channel blocks (nchwc) need prunepass's legalization: "
                          "convert_layout(..., legalize=True)")

    def choose(call: Any) -> dict[str, list[str]]:
        if call.op.name != CONV:
            return {}
        wanted = _desired(call, layout, lanes, report, grouped)
        return {CONV: wanted}

    original = mod
    mod = clip_as_min_max(mod)
    before = _activation_transforms(mod)
    try:
        mod = relax.transform.ConvertLayout({}, choose)(mod)
    except (tvm.error.InternalError, ValueError, MemoryError) as err:  # an op's layout
        # rule fails (vit_b_16: std::bad_alloc); NHWC can still be had one convolution at a
        # time, with a transpose on each side of it
        failure = f"Relax's ConvertLayout failed ({str(err).splitlines()[0]})"
        if layout != "nhwc":
            return original, LayoutReport(layout, converted=0,
                                          kept=[f"all convolutions: {failure}"])
        report = LayoutReport(layout, kept=[f"{failure}: each convolution transposed to "
                                            f"NHWC and back instead"])
        mod = _each_conv_nhwc(original, lambda call: _desired(call, layout, lanes, report,
                                                              grouped))
        report.edge_transforms = _activation_transforms(mod) - before
        return relax.transform.FoldConstant()(mod), report
    report.edge_transforms = _activation_transforms(mod) - before
    passes = [relax.transform.LegalizeOps({CONV: legalize_blocked})] if legalize else []
    # the weights' layout transforms, done once here
    mod = tvm.transform.Sequential([*passes, relax.transform.FoldConstant()])(mod)
    return mod, report


def _desired(call: Any, layout: str, lanes: int, report: LayoutReport,
             grouped: bool = False) -> list[str]:
    """[data, kernel, output] layouts for one convolution, or NCHW with a note in ``report``."""
    attrs = call.attrs
    data_shape = [int(d) for d in call.args[0].ty.shape]
    weight_shape = [int(d) for d in call.args[1].ty.shape]
    c_in, c_out, groups = data_shape[1], weight_shape[0], int(attrs.groups)
    what = f"conv {c_in}->{c_out} {weight_shape[2]}x{weight_shape[3]}"
    keep = ["NCHW", "OIHW", "NCHW"]
    if str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW":
        report.kept.append(f"{what}: written in {attrs.data_layout}/{attrs.kernel_layout}")
        return [str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)]
    if layout == "nhwc":
        if groups != 1 and not groups == c_in == c_out and not grouped:
            report.kept.append(f"{what}: {groups} groups (only depthwise or plain go NHWC)")
            return keep
        report.converted += 1
        return ["NHWC", "OHWI", "NHWC"]
    if groups == 1:
        in_block, out_block = channel_block(c_in, lanes), channel_block(c_out, lanes)
        if out_block == 1:
            report.kept.append(f"{what}: {c_out} output channels have no block > 1")
            return keep
        report.converted += 1
        return [f"NCHW{in_block}c", f"OIHW{in_block}i{out_block}o", f"NCHW{out_block}c"]
    if groups == c_in == c_out:
        block = channel_block(c_out, lanes)
        if block == 1:
            report.kept.append(f"{what} depthwise: {c_out} channels have no block > 1")
            return keep
        report.converted += 1
        return [f"NCHW{block}c", f"OIHW1i{block}o", f"NCHW{block}c"]
    report.kept.append(f"{what}: {groups} groups (no blocked kernel for grouped convolution)")
    return keep


def _each_conv_nhwc(mod: Any, desired: Any) -> Any:
    """``mod`` with each convolution ``desired`` wants in NHWC rewritten in place as
    transpose -> NHWC convolution (OHWI weights) -> transpose back."""
    import tvm
    from tvm import relax
    conv_op = tvm.ir.Op.get(CONV)

    @relax.expr_functor.mutator
    class EachConv(relax.PyExprMutator):
        def visit_call_(self, call: Any) -> Any:  # noqa: N802
            new = super().visit_call_(call)
            if not (isinstance(new, relax.Call) and new.op == conv_op):
                return new
            if desired(call) != ["NHWC", "OHWI", "NHWC"]:
                return new
            at = new.attrs
            x = self.builder_.emit(relax.op.permute_dims(new.args[0], [0, 2, 3, 1]))
            w = self.builder_.emit(relax.op.permute_dims(new.args[1], [0, 2, 3, 1]))
            y = self.builder_.emit(relax.op.nn.conv2d(
                x, w, strides=at.strides, padding=at.padding, dilation=at.dilation,
                groups=at.groups, data_layout="NHWC", kernel_layout="OHWI",
                out_layout="NHWC", out_dtype=at.out_dtype))
            return relax.op.permute_dims(y, [0, 3, 1, 2])

    return rewrite_functions(mod, EachConv)


def legalize_blocked(bb: Any, call: Any) -> Any:
    """Relax's conv2d legalization, with TOPI's blocked kernels for NCHW[x]c."""
    from tvm import topi
    from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

    attrs = call.attrs
    if len(str(attrs.data_layout)) == 4:
        return _nn_conv2d(bb, call)
    out_dtype = str(attrs.out_dtype)
    if out_dtype in ("", "None", "void"):  # the ONNX importer leaves it unset
        out_dtype = str(call.args[0].ty.dtype)
    common = dict(stride=attrs.strides, padding=attrs.padding, dilation=attrs.dilation,
                  layout=str(attrs.data_layout), out_layout=str(attrs.out_layout),
                  out_dtype=out_dtype)
    if int(attrs.groups) == 1:
        return bb.call_te(topi.nn.conv2d_NCHWc, call.args[0], call.args[1],
                          primfunc_name_hint="conv2d_NCHWc", **common)
    return bb.call_te(depthwise_conv2d_nchwc, call.args[0], call.args[1],
                      primfunc_name_hint="depthwise_conv2d_NCHWc", **common)


def depthwise_conv2d_nchwc(data: Any, kernel: Any, stride: Any, padding: Any, dilation: Any,
                           layout: str, out_layout: str, out_dtype: str) -> Any:
    """Depthwise convolution on channel blocks: data (N, C/b, H, W, b), kernel
    (C/b, 1, KH, KW, 1, b). TOPI declares one (depthwise_conv2d_NCHWc) but registers it only
    for targets TVM 0.27 no longer has."""
    from tvm import te, topi
    _, _, height, width, _ = (int(d) for d in data.shape)
    chunks, _, kh, kw, _, block = (int(d) for d in kernel.shape)
    sh, sw = (int(s) for s in stride)
    dh, dw = (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    padded = topi.nn.pad(data, [0, 0, top, left, 0], [0, 0, bottom, right, 0])
    out_h = (height + top + bottom - (kh - 1) * dh - 1) // sh + 1
    out_w = (width + left + right - (kw - 1) * dw - 1) // sw + 1
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    return te.compute(
        (int(data.shape[0]), chunks, out_h, out_w, block),
        lambda n, c, y, x, b: te.sum(
            padded[n, c, y * sh + ry * dh, x * sw + rx * dw, b].astype(out_dtype)
            * kernel[c, 0, ry, rx, 0, b].astype(out_dtype), axis=[ry, rx]),
        name="depthwise_conv2d_NCHWc")


def clip_as_min_max(mod: Any) -> Any:
    """``clip(x, lo, hi)`` written ``minimum(maximum(x, lo), hi)``. ConvertLayout knows no
    layout rule for clip and wraps each one in two layout transforms (MobileNet's ReLU6:
    70 transforms); the elementwise pair with scalar constants takes any layout, and FuseOps
    fuses it into the convolution as it did the clip."""
    import math

    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class ClipAsMinMax(PyExprMutator):
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if getattr(call.op, "name", None) != "relax.clip":
                return call
            x, low, high = call.args
            bounds = [float(getattr(b, "value", math.nan)) for b in (low, high)]
            if not all(math.isfinite(b) for b in bounds):
                return call
            dtype = str(x.ty.dtype)
            return relax.op.minimum(relax.op.maximum(x, relax.const(bounds[0], dtype)),
                                    relax.const(bounds[1], dtype))

    return rewrite_functions(mod, ClipAsMinMax)


def _count_convs(mod: Any) -> int:
    return sum(str(f.script()).count("R.nn.conv2d(") for _, f in mod.functions_items()
               if type(f).__name__ == "Function")


def _activation_transforms(mod: Any) -> int:
    """Layout transforms and transposes in ``main`` on tensors that are not constants
    (the weights', which are folded at build time)."""
    text = mod["main"].script()
    return sum(1 for line in text.splitlines()
               if ("R.layout_transform(" in line or "R.permute_dims(" in line)
               and "metadata[" not in line)
