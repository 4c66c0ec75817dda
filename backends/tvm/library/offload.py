"""The Relax rewrite: static float32 relax.matmul and relax.nn.conv2d (with the bias add that
follows them) become R.call_dps_packed calls of the prunepass.blas.* library kernels.

Run it on the inference form of the module (after FoldConstant, so weights are constants and
permute_dims(W) is folded) and before LegalizeOps: it matches the high-level operators, and
what it rewrites is no longer a TIR kernel for FuseOps, MetaSchedule or the build."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from prunepass.backends.tvm.dependency import import_tvm

PREFIX = "prunepass.blas."
# dense: matmul by a constant (a Linear / Gemm weight); matmul: of two activations (attention)
KINDS = ("dense", "matmul", "conv2d")
log = logging.getLogger(__name__)


@dataclass
class OffloadReport:
    """What offload_dense rewrote and what it left to TVM, one line per operator."""
    offloaded: list[str] = field(default_factory=list)  # "matmul_bias (197, 768)x(768, 3072)"
    kept: list[str] = field(default_factory=list)       # "matmul (n, 8)x(8, 4): a dynamic shape"

    @property
    def functions(self) -> list[str]:
        """The library functions the rewritten module calls."""
        return sorted({PREFIX + line.split()[0] for line in self.offloaded})

    def summary(self) -> str:
        return f"{len(self.offloaded)} operator(s) offloaded, {len(self.kept)} left to TVM"


def offload_dense(mod: Any, kinds: tuple[str, ...] | list[str] = KINDS, *,
                  report: OffloadReport | None = None, fuse_bias: bool = True) -> Any:
    """Rewrite ``mod``'s static float32 matmuls ("dense": by a constant, "matmul": of two
    activations) and NCHW conv2ds ("conv2d") into calls of the library kernels; a bias add of
    a constant that only follows one of them goes into the same call. Operators with another
    dtype, a dynamic shape, groups, another layout or a kind not in ``kinds`` stay in TVM;
    ``report`` (if given) lists both. Returns the new module."""
    tvm = import_tvm()
    from tvm import relax

    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        from prunepass.backends.tvm.errors import LibraryError
        raise LibraryError(f"unknown kind(s) {', '.join(unknown)}: use {', '.join(KINDS)}")
    report = report if report is not None else OffloadReport()
    mutator = _mutator_class(tvm, relax)(mod, report, set(kinds), fuse_bias)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.fusable = _fusable_adds(relax, func)
            new = mutator.visit_expr(func)
            mutator.builder_.update_func(gv, relax.analysis.remove_all_unused(new))
    log.info("library kernels: %s", report.summary())
    return mutator.builder_.get()


def required_libraries(model: Any) -> list[str]:
    """The prunepass.blas.* functions ``model`` calls: an IRModule from offload_dense, a built
    executable, a runtime module from tvm.runtime.load_module, or the path of an exported
    library (loaded to read it)."""
    tvm = import_tvm()
    from tvm import relax
    if isinstance(model, tvm.IRModule):
        names: set[str] = set()
        dps = tvm.ir.Op.get("relax.call_dps_packed")

        def visit(node: Any) -> None:
            if (isinstance(node, relax.Call) and node.op == dps
                    and isinstance(node.args[0], relax.ExternFunc)):
                names.add(str(node.args[0].global_symbol))

        for _, func in model.functions_items():
            if isinstance(func, relax.Function):
                relax.analysis.post_order_visit(func, visit)
        return sorted(n for n in names if n.startswith(PREFIX))
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        model = tvm.runtime.load_module(str(model))
    executable = model if hasattr(model, "as_text") else relax.VMExecutable(model)
    return sorted({line[1:].split()[0] for line in executable.as_text().splitlines()
                   if line.startswith("@" + PREFIX) and line.rstrip().endswith("packed_func;")})


def _shape(ty: Any) -> tuple:
    from tvm import relax
    from tvm.ir.prim.expr import IntImm
    shape = getattr(ty, "shape", None)
    if not isinstance(shape, relax.ShapeExpr):
        return ("?",)
    return tuple(int(d) if isinstance(d, IntImm) else str(d) for d in shape.values)


def _text(ty: Any) -> str:
    """A shape as "(n, 8)", symbolic dimensions by name."""
    return "(" + ", ".join(str(d) for d in _shape(ty)) + ")"


def _why_not(ty: Any, min_rank: int = 2) -> str | None:
    """None when ``ty`` is a static float32 tensor of rank >= min_rank, else why not."""
    from tvm import relax
    from tvm.ir.prim.expr import IntImm
    if not isinstance(ty, relax.TensorType):
        return "not a tensor"
    if ty.dtype != "float32":
        return f"dtype {ty.dtype}"
    if not isinstance(ty.shape, relax.ShapeExpr):
        return "unknown shape"
    if any(not isinstance(d, IntImm) for d in ty.shape.values):
        return "a dynamic shape"
    if len(ty.shape.values) < min_rank:
        return f"rank below {min_rank}"
    return None


def _numel(ty: Any) -> int:
    n = 1
    for d in _shape(ty):
        n *= d
    return n


def _swaps_last_two(axes: Any, rank: int) -> bool:
    if axes is None:
        return rank == 2
    return [int(a) for a in axes] == list(range(rank - 2)) + [rank - 1, rank - 2]


def use_counts(relax: Any, func: Any) -> dict:
    """How many bindings (and the function's result) use each variable of ``func``."""
    uses: dict = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            for v in relax.analysis.free_vars(binding.value):
                uses[v] = uses.get(v, 0) + 1
    for v in relax.analysis.free_vars(func.body.body):
        uses[v] = uses.get(v, 0) + 1
    return uses


def _fusable_adds(relax: Any, func: Any) -> set:
    """The add calls with an operand that is a matmul / conv2d result used nowhere else."""
    import tvm
    producers = (tvm.ir.Op.get("relax.matmul"), tvm.ir.Op.get("relax.nn.conv2d"))
    add = tvm.ir.Op.get("relax.add")
    uses = use_counts(relax, func)
    var2val = relax.analysis.get_var2val(func)
    fusable = set()
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and value.op == add:
                for arg in value.args:
                    bound = var2val.get(arg) if isinstance(arg, relax.Var) else None
                    if (isinstance(bound, relax.Call) and bound.op in producers
                            and uses.get(arg, 0) == 1):
                        fusable.add(value)
    return fusable


_CLASS: list = []


def _mutator_class(tvm: Any, relax: Any) -> type:
    """The PyExprMutator subclass, defined on first use so importing this module does not
    import TVM."""
    if _CLASS:
        return _CLASS[0]
    from tvm.ir.expr import GenericConst

    matmul_op = tvm.ir.Op.get("relax.matmul")
    conv2d_op = tvm.ir.Op.get("relax.nn.conv2d")
    add_op = tvm.ir.Op.get("relax.add")
    permute_op = tvm.ir.Op.get("relax.permute_dims")

    @relax.expr_functor.mutator
    class Offload(relax.PyExprMutator):
        def __init__(self, mod: Any, report: OffloadReport, kinds: set, fuse_bias: bool):
            super().__init__(mod)
            self.report = report
            self.kinds = kinds
            self.fuse_bias = fuse_bias
            self.fusable: set = set()
            self.emitted: dict = {}  # our call -> (name, args, description, bias check)

        def visit_call_(self, call: Any) -> Any:  # noqa: N802
            new = super().visit_call_(call)
            if not isinstance(new, relax.Call):
                return new
            if new.op == matmul_op:
                return self._matmul(call, new)
            if new.op == conv2d_op:
                return self._conv2d(call, new)
            if new.op == add_op and self.fuse_bias and call in self.fusable:
                return self._add(call, new)
            return new

        def _emit(self, name: str, args: list, desc: str, out_ty: Any, bias_ok: Any) -> Any:
            out = relax.call_dps_packed(relax.ExternFunc(PREFIX + name), relax.Tuple(args),
                                        out_ty=out_ty)
            self.emitted[out] = (name, args, desc, bias_ok)
            self.report.offloaded.append(f"{name} {desc}")
            return out

        def _keep(self, new: Any, op: str, desc: str, reason: str) -> Any:
            self.report.kept.append(f"{op} {desc}: {reason}")
            return new

        def _matmul(self, orig: Any, new: Any) -> Any:
            a, b = new.args
            desc = f"{_text(a.ty)}x{_text(b.ty)}"
            for what, ty in (("a", a.ty), ("b", b.ty), ("the result", orig.ty)):
                reason = _why_not(ty)
                if reason:
                    return self._keep(new, "matmul", desc, f"{what} has {reason}")
            out_dtype = str(new.attrs.out_dtype)
            if out_dtype not in ("", "void", "None", "float32"):
                return self._keep(new, "matmul", desc, f"out_dtype {out_dtype}")
            kind = "dense" if isinstance(b, GenericConst) else "matmul"
            if kind not in self.kinds:
                return self._keep(new, "matmul", desc, f"kind {kind} not asked for")
            name = "matmul"
            if isinstance(b, relax.Var):  # matmul(x, permute_dims(w)): the GEMM transposes
                bound = self.lookup_binding(b)
                if (isinstance(bound, relax.Call) and bound.op == permute_op
                        and _swaps_last_two(bound.attrs.axes, len(_shape(b.ty)))
                        and _why_not(bound.args[0].ty) is None):
                    b, name = bound.args[0], "matmul_nt"
            n = _shape(orig.ty)[-1]
            return self._emit(name, [a, b], desc, orig.ty,
                              lambda ty: _shape(ty)[-1] == n and _numel(ty) == n)

        def _conv2d(self, orig: Any, new: Any) -> Any:
            if "conv2d" not in self.kinds:
                return new  # not reported: convolutions are not matmuls
            x, w = new.args
            at = new.attrs
            desc = (f"{_text(x.ty)}*{_text(w.ty)} stride {tuple(int(v) for v in at.strides)} "
                    f"pad {tuple(int(v) for v in at.padding)}")
            for what, ty in (("x", x.ty), ("w", w.ty), ("the result", orig.ty)):
                reason = _why_not(ty, 4)
                if reason:
                    return self._keep(new, "conv2d", desc, f"{what} has {reason}")
            if int(at.groups) != 1:
                return self._keep(new, "conv2d", desc, f"groups={int(at.groups)}")
            layouts = (str(at.data_layout), str(at.kernel_layout), str(at.out_layout))
            if layouts != ("NCHW", "OIHW", "NCHW"):
                return self._keep(new, "conv2d", desc, f"layouts {'/'.join(layouts)}")
            if at.out_dtype is not None and str(at.out_dtype) not in ("", "void", "float32"):
                return self._keep(new, "conv2d", desc, f"out_dtype {at.out_dtype}")
            geometry = [int(v) for v in (*at.strides, *at.padding, *at.dilation)]
            oc = _shape(orig.ty)[1]
            return self._emit("conv2d", [x, w, relax.ShapeExpr(geometry)], desc, orig.ty,
                              lambda ty: (len(_shape(ty)) in (3, 4)
                                          and _shape(ty)[-3:] == (oc, 1, 1)))

        def _add(self, orig: Any, new: Any) -> Any:
            for result, bias in (new.args, new.args[::-1]):
                if not isinstance(result, relax.Var):
                    continue
                bound = self.lookup_binding(result)
                if bound not in self.emitted:
                    continue
                name, args, desc, bias_ok = self.emitted[bound]
                if (name.endswith("_bias") or not isinstance(bias, GenericConst)
                        or _why_not(bias.ty, 1) or not bias_ok(bias.ty)
                        or _shape(orig.ty) != _shape(result.ty)):
                    continue
                self.report.offloaded.remove(f"{name} {desc}")
                return self._emit(f"{name}_bias", [*args[:2], bias, *args[2:]], desc, orig.ty,
                                  lambda ty: False)
            return new

    _CLASS.append(Offload)
    return Offload
