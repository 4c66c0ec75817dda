"""The ONNX frontend on hand-built graphs: op mapping, static shape chains, and bad input
(corrupt, truncated, missing external data, unknown ops, unresolvable dynamic sizes)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from prunepass import PlanError, TraceError
from prunepass.frontends.onnx import OnnxModel
from prunepass.ir import ops
from prunepass.numerics import relative_error
from prunepass.pm import AnalysisManager, PassManager


OPSET = 18
RNG = np.random.default_rng(0)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(
        (RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:]) or 1)).astype(np.float32), name)


def _i64(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _model(nodes: list, inits: list, inputs: list, outputs: list,
           opsets: list | None = None) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    m = helper.make_model(g, opset_imports=opsets or [helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    return m


def _conv_chain(middle: list, mid_out: str, n: int = None, extra_opsets: list | None = None
                ) -> onnx.ModelProto:
    """x -> conv(8) -> relu -> <middle> -> conv(4) -> y, batch ``n`` (None = symbolic)."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]), *middle,
             helper.make_node("Conv", [mid_out, "w2"], ["y"])]
    inits = [_w("w1", 8, 3, 3, 3), _w("b1", 8), _w("w2", 4, 8, 1, 1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n or "N", 3, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)
    return _model(nodes, inits, [x], [y],
                  [helper.make_opsetid("", OPSET)] + (extra_opsets or []))


def _save(m: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(m, str(path))
    return path


def _prune(a: OnnxModel, pipeline: str = "prune-channels<ratio=0.5>,dce"):  # noqa: ANN202
    return PassManager(pipeline).run(a, AnalysisManager(a, check_numerics=True))


# -- mapping ------------------------------------------------------------------------------
def test_shape_chain_is_folded_and_rewritten(tmp_path: Path) -> None:
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape (the legacy exporter's flatten):
    folded into a static target, its batch entry pinned, its channel entry rewritten."""
    middle = [
        helper.make_node("Shape", ["r1"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["r1", "target"], ["flat"]),
        helper.make_node("Reshape", ["flat", "back"], ["r2"]),
    ]
    m = _conv_chain(middle, "r2", n=2)
    m.graph.initializer.extend([numpy_helper.from_array(np.array(0, np.int64), "zero"),
                                _i64("axes0", [0]), _i64("rest", [8, 36]),
                                _i64("back", [2, 8, 6, 6])])
    a = OnnxModel.load(_save(m, tmp_path / "chain.onnx"))
    reshapes = [n for n in a.graph.nodes if n.op == ops.RESHAPE]
    assert [n.target for n in a.graph.nodes] == ["Conv", "Relu", "Reshape", "Reshape", "Conv"]
    assert reshapes[0].outputs[0].shape == (2, 8, 36)
    ref = a.run()
    rec = _prune(a)
    assert rec.step("remove-channels")["max_rel_error_vs_masked"] <= 1e-5
    assert a.graph.state["w1"].shape == (4, 3, 3, 3)
    assert [n.outputs[0].shape for n in a.graph.nodes if n.op == ops.RESHAPE] == \
        [(2, 4, 36), (2, 4, 6, 6)]
    assert a.run()[0].shape == ref[0].shape
    onnx.checker.check_model(a.materialize(), full_check=True)


def test_unmapped_op_is_a_barrier_and_left_alone(tmp_path: Path) -> None:
    middle = [helper.make_node("LpNormalization", ["r1"], ["n1"], axis=1, p=2)]
    m = _conv_chain(middle, "n1", n=1)
    a = OnnxModel.load(_save(m, tmp_path / "lp.onnx"))
    rec = _prune(a)
    barriers = rec.step("remove-channels")["barriers"]
    assert [b["op"] for b in barriers] == ["LpNormalization"]
    assert "no ONNX mapping" in barriers[0]["why"]
    # the channels through the barrier are kept; the last conv's are pinned as an output
    assert a.graph.state["w1"].shape == (8, 3, 3, 3)
    assert a.graph.state["w2"].shape == (4, 8, 1, 1)


def test_custom_op_known_to_onnxruntime_is_a_barrier(tmp_path: Path) -> None:
    """onnx cannot infer com.microsoft ops; their shapes are measured with onnxruntime."""
    middle = [helper.make_node("Gelu", ["r1"], ["g1"], domain="com.microsoft"),
              helper.make_node("Conv", ["g1", "w3"], ["c3"]),
              helper.make_node("Relu", ["c3"], ["r3"])]
    m = _conv_chain(middle, "r3", n=1, extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    m.graph.initializer.append(_w("w3", 8, 8, 1, 1))
    a = OnnxModel.load(_save(m, tmp_path / "ms.onnx"))
    gelu = next(n for n in a.graph.nodes if n.target == "com.microsoft::Gelu")
    assert gelu.op == ops.BARRIER and gelu.outputs[0].shape == (1, 8, 6, 6)
    rec = _prune(a)
    assert rec.step("remove-channels")["max_rel_error_vs_masked"] <= 1e-5
    assert a.graph.state["w1"].shape == (8, 3, 3, 3)  # behind the barrier
    assert a.graph.state["w3"].shape == (4, 8, 1, 1)  # after it: pruned
    onnx.checker.check_model(a.materialize(), full_check=True)


def test_unknown_custom_op_names_the_node(tmp_path: Path) -> None:
    middle = [helper.make_node("Frobnicate", ["r1"], ["f1"], name="my_frob",
                               domain="example.ops")]
    m = _conv_chain(middle, "f1", n=1, extra_opsets=[helper.make_opsetid("example.ops", 1)])
    with pytest.raises(TraceError, match=r"node my_frob \(Frobnicate\)"):
        OnnxModel.load(_save(m, tmp_path / "frob.onnx"))


def test_value_from_batch_and_pruned_size_is_a_plan_error(tmp_path: Path) -> None:
    """A scale computed from the symbolic batch size and a channel count cannot be
    frozen without losing the symbolic batch: the plan is refused, naming the node."""
    middle = [
        helper.make_node("Shape", ["r1"], ["s"], start=0, end=2),
        helper.make_node("ReduceProd", ["s"], ["p"], keepdims=0),
        helper.make_node("Cast", ["p"], ["pf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["r1", "pf"], ["d1"], name="scale_by_size"),
    ]
    m = _conv_chain(middle, "d1")
    a = OnnxModel.load(_save(m, tmp_path / "dyn.onnx"), [RNG.standard_normal(
        (2, 3, 6, 6)).astype(np.float32)])
    assert a.graph.inputs[0].dynamic_axes == (0,)
    before = a.run()
    with pytest.raises(PlanError, match=r"node scale_by_size \(Div\).*symbolic size"):
        _prune(a)
    assert relative_error(a.run(), before) == 0.0  # a refused plan leaves the model as it was


def test_batch_stays_symbolic(tmp_path: Path) -> None:
    middle = [helper.make_node("Flatten", ["r1"], ["f"], axis=1),
              helper.make_node("Shape", ["r1"], ["s"], start=0, end=1),
              helper.make_node("Concat", ["s", "tail"], ["t"], axis=0),
              helper.make_node("Reshape", ["f", "t"], ["r2"])]
    m = _conv_chain(middle, "r2")
    m.graph.initializer.append(_i64("tail", [8, 6, 6]))
    a = OnnxModel.load(_save(m, tmp_path / "sym.onnx"))
    _prune(a)
    out = a.materialize()
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    sess = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        y = sess.run(None, {"x": np.ones((n, 3, 6, 6), np.float32)})[0]
        assert y.shape == (n, 4, 6, 6)


# -- bad files ----------------------------------------------------------------------------
def test_corrupt_and_truncated_files(tmp_path: Path) -> None:
    m = _conv_chain([], "r1", n=1)
    good = _save(m, tmp_path / "good.onnx").read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(good[: len(good) // 2])
    with pytest.raises(TraceError, match="trunc.onnx is not a readable ONNX model"):
        OnnxModel.load(tmp_path / "trunc.onnx")
    (tmp_path / "noise.onnx").write_bytes(RNG.bytes(4096))
    with pytest.raises(TraceError, match="noise.onnx"):
        OnnxModel.load(tmp_path / "noise.onnx")
    with pytest.raises(TraceError, match="does not exist"):
        OnnxModel.load(tmp_path / "absent.onnx")


def test_missing_external_data(tmp_path: Path) -> None:
    m = _conv_chain([], "r1", n=1)
    path = tmp_path / "ext.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.data", size_threshold=0)
    assert OnnxModel.load(path).graph.state["w1"].shape == (8, 3, 3, 3)
    (tmp_path / "ext.data").unlink()
    with pytest.raises(TraceError, match=r"tensor 'w1'.*'ext.data', which is missing"):
        OnnxModel.load(path)


def test_invalid_graph_fails_the_checker(tmp_path: Path) -> None:
    m = _conv_chain([], "r_missing", n=1)  # the last conv reads a value nobody makes
    with pytest.raises(TraceError, match="onnx.checker"):
        OnnxModel.load(_save(m, tmp_path / "bad.onnx"))


def test_input_file_is_never_written(tmp_path: Path) -> None:
    path = _save(_conv_chain([], "r1", n=1), tmp_path / "in.onnx")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    a = OnnxModel.load(path)
    _prune(a)
    with pytest.raises(PlanError, match="refusing to overwrite .*in.onnx"):
        a.save(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    out = a.save(tmp_path / "out.onnx")
    assert onnx.load(str(out)).graph.initializer[0].dims[0] == 4


def test_example_inputs_are_checked(tmp_path: Path) -> None:
    path = _save(_conv_chain([], "r1", n=1), tmp_path / "in.onnx")
    with pytest.raises(TraceError, match=r"example input for x has shape \[1, 3, 5, 5\]"):
        OnnxModel.load(path, [np.zeros((1, 3, 5, 5), np.float32)])
    with pytest.raises(TraceError, match="takes 1 inputs"):
        OnnxModel.load(path, [])


def test_taylor_importance_is_refused(tmp_path: Path) -> None:
    a = OnnxModel.load(_save(_conv_chain([], "r1", n=1), tmp_path / "in.onnx"))
    with pytest.raises(PlanError, match="taylor"):
        _prune(a, "prune-channels<ratio=0.5,importance=taylor>")


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_uneven_split_gets_explicit_sizes(tmp_path: Path, opset: int) -> None:
    """An even Split (no sizes given) whose parts lose different channel counts must be
    given explicit sizes, as an attribute before opset 13 and an input from 13 on."""
    attrs = {"axis": 1, "num_outputs": 2} if opset >= 18 else {"axis": 1}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]),
             helper.make_node("Split", ["c1"], ["s1", "s2"], **attrs),
             helper.make_node("Conv", ["s1", "wa"], ["ya"]),
             helper.make_node("Conv", ["s2", "wb"], ["yb"]),
             helper.make_node("Add", ["ya", "yb"], ["y"])]
    inits = [_w("w1", 8, 3, 1, 1), _w("wa", 4, 4, 1, 1), _w("wb", 4, 4, 1, 1)]
    m = _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                            [1, 3, 4, 4])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
               [helper.make_opsetid("", opset)])
    a = OnnxModel.load(_save(m, tmp_path / "split.onnx"))
    cg = AnalysisManager(a).get("channel-groups")
    removed = np.zeros(cg.n_classes, bool)
    removed[cg.classes_of("w1", 0)[[0, 1, 2, 5]]] = True  # 3 from the first part, 1 after
    keep = cg.keep_for(removed)
    masked = a.clone()
    masked.apply_keep(keep, "mask")
    a.apply_keep(keep, "remove")
    assert [o.shape[1] for o in a.graph.node(a.model.graph.node[1].name).outputs] == [1, 3]
    assert relative_error(a.run(), masked.run()) <= 1e-6
    onnx.checker.check_model(a.materialize(), full_check=True)


def test_models_over_2gib_go_through_files(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """Protobuf cannot serialise 2 GiB: above the limit, sessions and saved models use
    external data files. The limit is lowered here so that a small model takes that path."""
    import prunepass.frontends.onnx.adapter as adapter_mod
    import prunepass.frontends.onnx.load as load_mod
    import prunepass.frontends.onnx.runtime as runtime_mod
    for mod in (adapter_mod, load_mod, runtime_mod):
        monkeypatch.setattr(mod, "PROTO_LIMIT", 1024)
    m = _conv_chain([helper.make_node("Conv", ["r1", "w3"], ["c3"], pads=[2, 2, 2, 2]),
                     helper.make_node("Relu", ["c3"], ["r3"])], "r3", n=1)
    m.graph.initializer.append(_w("w3", 8, 8, 5, 5))  # still over 1 KiB once pruned
    src = tmp_path / "in.onnx"
    onnx.save_model(m, str(src), save_as_external_data=True, location="weights.onnx.data",
                    size_threshold=0)
    a = OnnxModel.load(src)
    dense = a.run()
    rec = _prune(a)
    assert rec.step("remove-channels")["max_rel_error_vs_masked"] <= 1e-5
    with pytest.raises(PlanError, match="refusing to overwrite .*weights.onnx.data"):
        a.save(tmp_path / "weights.onnx")  # its data file would be the input's
    out = a.save(tmp_path / "out" / "pruned.onnx")
    assert sorted(p.name for p in out.parent.iterdir()) == ["pruned.onnx", "pruned.onnx.data"]
    onnx.checker.check_model(str(out), full_check=True)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": a.example_inputs[0]})[0]
    assert y.shape == dense[0].shape and relative_error([y], a.run()) <= 1e-6
