"""The ``prunepass`` command."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prunepass.errors import CheckFailed, PrunepassError, first_line
from prunepass.paths import check_outputs


def _load(args: argparse.Namespace):  # noqa: ANN202
    from prunepass.zoo import load_model, parse_shape, random_input
    if args.model.endswith(".pt2"):  # a torch.export archive: its own example inputs
        import torch
        if not Path(args.model).is_file():
            raise PrunepassError(f"model {args.model!r}: no such file")
        try:
            ep = torch.export.load(args.model)
        except Exception as e:
            raise PrunepassError(f"model {args.model!r} is not a torch.export archive "
                                 f"({first_line(e)})") from None
        if args.input_shape:
            return ep, (random_input(parse_shape(args.input_shape)),)
        return ep, None
    if args.model.endswith(".onnx"):  # an ONNX file: inputs from the file unless given
        if args.input_shape:
            return args.model, (random_input(parse_shape(args.input_shape)).numpy(),)
        return args.model, None
    return load_model(args.model, args.input_shape)


TORCH_OUTPUTS = (".pt2", ".pt", ".onnx")


def save_model(module: Any, example_inputs: Any, out: str) -> str:
    """``.pt2``: a torch.export archive (load with torch.export.load(p).module());
    ``.pt``: the whole module pickled (torch.load(p, weights_only=False)); ``.onnx``: an
    ONNX file (torch's exporter). torch cannot pickle parametrized modules, so weight masks
    are folded into the weights for .pt and .onnx (the zeros stay; the .pt2 archive keeps
    the masks themselves)."""
    path = Path(out)
    import torch
    from prunepass.backends.measure.torch_export import export_onnx
    from prunepass.frontends.torch import weight_masks
    from prunepass.frontends.torch.trace import export_program
    baked = weight_masks.bake(module) if weight_masks.read(module) else module
    if path.suffix == ".pt2":
        torch.export.save(export_program(module, example_inputs), str(path))
    elif path.suffix == ".pt":
        torch.save(baked, str(path))
    elif path.suffix == ".onnx":
        export_onnx(baked, example_inputs, path)
    else:
        raise PrunepassError(f"output {out!r}: use a .pt2 (torch.export archive), .pt "
                             "(pickled module) or .onnx file name")
    return str(path)


_KINDS = {"analysis": "analysis passes (results cached until a transform changes the model)",
          "plan": "plan passes (build the prune plan; remove-channels or mask-channels "
                  "applies it)",
          "transform": "transform passes",
          "pipeline": "named pipelines (each expands to the passes above; shown: what its "
                      "defaults expand to)"}


# plan passes in the order a pipeline uses them
_ORDER = {n: i for i, n in enumerate(("score-channels", "limit-channels", "select-channels",
                                      "select-budget", "select-threshold", "hw-round",
                                      "hw-check"))}


def cmd_passes(args: argparse.Namespace) -> int:
    from prunepass.pm import REGISTRY, PassManager
    from prunepass.pm.options import format_value
    if args.expand:
        print(PassManager(args.expand).pipeline)
        return 0
    for kind, title in _KINDS.items():
        print(f"{title}:")
        for name, cls in sorted(REGISTRY.items(), key=lambda kv: (_ORDER.get(kv[0], 99), kv[0])):
            if cls.kind != kind:
                continue
            print(f"  {name:16} {cls.summary()}")
            if kind == "pipeline":
                print(f"      = {','.join(p.text() for p in PassManager([cls()]).passes)}")
            for o in cls.options:
                print(f"      {o.name}={o.describe_type()} (default {format_value(o.default)}): {o.doc}")
        print()
    print("pipeline syntax: pass,pass<option=value,option=[a,b]>,...\n"
          "`prunepass passes --expand PIPELINE` prints PIPELINE as it runs: named pipelines "
          "expanded, every option spelled out")
    return 0


def load_calibration(path: str, onnx_model: bool) -> Any:  # noqa: ANN401
    """Calibration inputs from a .pt or .npz file, in the form prune() takes."""
    import numpy as np
    import torch
    if not Path(path).is_file():
        raise PrunepassError(f"--calibration {path}: no such file")
    if path.endswith(".npz"):
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        positional = sorted((k for k in arrays if k.startswith("arr_")),
                            key=lambda k: int(k[4:]))
        conv = (lambda a: a) if onnx_model else torch.from_numpy
        args = tuple(conv(arrays[k]) for k in positional)
        kwargs = {k: conv(v) for k, v in arrays.items() if k not in positional}
        return (args, kwargs) if kwargs and args else kwargs or args
    if path.endswith(".pt"):
        data = torch.load(path, weights_only=True)
        if onnx_model:
            raise PrunepassError(f"--calibration {path}: an ONNX model takes a .npz of arrays")
        return data if isinstance(data, (tuple, list, dict)) else (data,)
    raise PrunepassError(f"--calibration {path}: give a .pt or .npz file")


def cmd_run(args: argparse.Namespace) -> int:
    import prunepass
    from prunepass.pm import DumpIR, PassManager, TimePasses, VerifyIR
    from prunepass.report import format_record
    onnx_input = args.model.endswith(".onnx")
    check_outputs({"-o": (args.output, (".onnx",) if onnx_input else TORCH_OUTPUTS, False),
                   "--report": (args.report, (), False), "--plot": (args.plot, (), False),
                   "--dump-ir": (args.dump_ir, (), True)}, [args.model, args.record])
    model, inputs = _load(args)
    instruments = [TimePasses(), VerifyIR()] + ([DumpIR(args.dump_ir)] if args.dump_ir else [])
    pm = PassManager(args.pipeline, instruments=instruments)
    if args.record:
        result = prunepass.apply_record(model, inputs, args.record,
                                        check_numerics=args.check_numerics,
                                        energy_profile=args.profile)
    else:
        calibration = load_calibration(args.calibration, onnx_input) \
            if args.calibration else None
        result = prunepass.prune(model, inputs, pm, check_numerics=args.check_numerics,
                                 progress=not args.quiet, energy_profile=args.profile,
                                 calibration=calibration)
    result.record.model = args.model
    say = _say(args)
    say(format_record(result.record))
    if args.print_plan:
        from prunepass.report import format_plan
        say(format_plan(result.record))
    if args.sparsity:
        from prunepass.passes.analysis.sparsity import format_sparsity
        from prunepass.pm import AnalysisManager
        say("sparsity:")
        say(format_sparsity(AnalysisManager(result.adapter).get("sparsity"), top=args.top))
    written = {}
    if args.report:
        result.record.save(args.report)
        written["report"] = args.report
        say(f"record written to {args.report}")
    if args.output:
        if result.adapter.frontend == "onnx":  # -o is a .onnx file, never the input
            written["model"] = str(result.adapter.save(args.output))
        else:
            written["model"] = save_model(result.model, result.adapter.example_inputs,
                                          args.output)
        say(f"pruned model written to {written['model']}")
    if args.plot:
        from prunepass.plots import energy_per_layer
        written["plot"] = str(energy_per_layer(result.record, args.plot))
        say(f"energy chart written to {written['plot']}")
    if args.json:
        _print_json({**result.record.to_dict(), "written": written})
    return 0


def _json_arg(s: argparse.ArgumentParser, what: str) -> None:
    s.add_argument("--json", action="store_true", help=f"write {what} to stdout as one JSON "
                   "document (an error too: {\"error\": ...}); the text goes to stderr")


def _say(args: argparse.Namespace):  # noqa: ANN202
    """Human text: on stdout, or on stderr where stdout carries --json."""
    return (lambda text: print(text, file=sys.stderr)) if getattr(args, "json", False) \
        else print


def _print_json(data: dict) -> None:
    import json
    json.dump(data, sys.stdout, indent=1)
    sys.stdout.write("\n")


def cmd_report(args: argparse.Namespace) -> int:
    from prunepass.record import Record
    from prunepass.report import format_record
    check_outputs({"--plot": (args.plot, (), False)}, [args.record])
    rec = Record.load(args.record)
    say = _say(args)
    say(format_record(rec, top_layers=args.top))
    if args.plot:
        from prunepass.plots import energy_per_layer
        say(f"energy chart written to {energy_per_layer(rec, args.plot)}")
    if args.json:
        _print_json(rec.to_dict())
    return 0


def cmd_groups(args: argparse.Namespace) -> int:
    import prunepass
    from prunepass.pm import AnalysisManager
    model, inputs = _load(args)
    adapter = prunepass.load(model, inputs, args.model)
    cg = AnalysisManager(adapter).get("channel-groups")
    if args.json:
        _print_json({"model": args.model, "groups": [g.summary() for g in cg.groups],
                     "barriers": cg.barriers})
        return 0
    print(f"{len(cg.groups)} channel groups in {args.model}:")
    print(f"  {'id':>4} {'channels':>8} {'prunable':>8} {'exact':>5}  producers")
    for g in cg.groups:
        s = g.summary()
        prods = ", ".join(s["producers"][:3]) + (" ..." if len(s["producers"]) > 3 else "")
        print(f"  {s['id']:>4} {s['channels']:>8} {s['prunable']:>8} "
              f"{'yes' if s['exact'] else 'no':>5}  {prods}")
    if cg.barriers:
        print("barriers (channels through them are kept):")
        for b in cg.barriers:
            print(f"  {b['node']}: {b['op']} ({b['why']})")
    return 0


def _function(spec: str, flag: str):  # noqa: ANN202
    """A callable named package.module:function on the command line."""
    import importlib
    where, sep, name = spec.partition(":")
    if not sep or not where or not name:
        raise PrunepassError(f"{flag} {spec!r}: use package.module:function")
    try:
        fn = getattr(importlib.import_module(where), name)
    except ImportError as e:
        raise PrunepassError(f"{flag} {spec!r}: cannot import {where!r} ({e})") from None
    except AttributeError:
        raise PrunepassError(f"{flag} {spec!r}: {where} has no attribute {name!r}") from None
    if not callable(fn):
        raise PrunepassError(f"{flag} {spec!r} is not callable")
    return fn


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers like 1,8") from None


def cmd_search(args: argparse.Namespace) -> int:
    from prunepass.search import search
    check_outputs({"--out": (args.out, (), True)}, [args.model])
    constraints = {}
    for item in args.constraint:
        key, sep, value = item.partition("=")
        if not sep:
            raise PrunepassError(f"--constraint {item!r}: use NAME=VALUE, e.g. latency_ms=4, "
                                 "accuracy_drop=1 or macs=0.5x")
        constraints[key.strip()] = value.strip()
    evaluate = _function(args.evaluate, "--evaluate") if args.evaluate else None
    finetune = _function(args.finetune, "--finetune") if args.finetune else None
    model, inputs = _load(args)  # after the cheap checks: loading may train or download
    result = search(
        model, inputs, evaluate,
        objectives=args.objectives, constraints=constraints, n_trials=args.trials,
        max_ratio=args.max_ratio, ratio_step=args.ratio_step, round_to=args.round_to,
        importance=args.importance.split(","), profile=args.profile, finetune=finetune,
        finetune_epochs=args.finetune_epochs, storage=args.storage, study_name=args.study,
        population_size=args.population, seed=args.seed, timeout=args.timeout,
        progress=not args.quiet)
    print(result.table())
    if args.out:
        for what, path in result.save(args.out).items():
            print(f"{what} written to {path}")
    return 0


def _pruned(args: argparse.Namespace):  # noqa: ANN202
    """(dense module, pruned module or None, example inputs) for compile and bench."""
    import prunepass
    model, inputs = _load(args)
    if not args.pipeline:
        return model, None, inputs
    return model, prunepass.prune(model, inputs, args.pipeline, progress=False).model, inputs


def _rpc(args: argparse.Namespace):  # noqa: ANN202
    """The RPC tracker named on the command line, or None."""
    if bool(args.rpc_tracker) != bool(args.rpc_key):
        raise PrunepassError("--rpc-tracker and --rpc-key go together: the tracker's "
                             "HOST:PORT and the key the device registered with")
    if not args.rpc_tracker:
        return None
    from prunepass.backends.tvm.rpc import RPCTracker
    return RPCTracker.parse(args.rpc_tracker, args.rpc_key, args.rpc_timeout)


def _rpc_args(s: argparse.ArgumentParser, what: str) -> None:
    s.add_argument("--rpc-tracker", metavar="HOST:PORT", help=f"{what} on the device behind "
                   "this TVM RPC tracker")
    s.add_argument("--rpc-key", metavar="KEY", help="the key the device registered with")
    s.add_argument("--rpc-timeout", type=float, default=30.0,
                   help="seconds allowed for each exchange with the tracker and device")


def cmd_compile(args: argparse.Namespace) -> int:
    from prunepass.backends.tvm import compile_model
    rpc = _rpc(args)
    check_outputs({"-o": (args.output, (), True)}, [args.model])
    from prunepass.backends.tvm import resolve_target
    target = resolve_target(args.target, layout=args.layout, library=args.library,
                            library_ops=(tuple(args.library_ops.split(","))
                                         if args.library_ops else None))
    model, pruned, inputs = _pruned(args)
    compiled = compile_model(pruned if pruned is not None else model, inputs, target,
                             args.output, trials=args.trials, minutes=args.tune_minutes,
                             database=args.database, name=args.name,
                             progress=not args.quiet, rpc=rpc)
    print(f"{args.target}: library {compiled.library} (metadata {compiled.metadata})")
    if compiled.layout is not None:
        print(f"  {compiled.layout.summary()}")
        for kept in compiled.layout.kept:
            print(f"    kept in NCHW: {kept}")
    if compiled.offload is not None:
        files = ", ".join(p.name for p in compiled.library_files) or "nothing"
        print(f"  library kernels ({compiled.target.library}): {compiled.offload.summary()}; "
              f"ship {files} beside the library")
        for line in compiled.offload.offloaded:
            print(f"    offloaded: {line}")
        for line in compiled.offload.kept:
            print(f"    kept in TVM: {line}")
    if not args.trials and not args.tune_minutes:
        print("  untuned: default schedules (on a CPU: parallel, vectorized loops; TVM's own "
              "convolutions and matmuls stay slow); pass --tune-minutes M (or --trials N) "
              "to tune")
    for p in compiled.device_code:
        print(f"  device code {p}")
    if compiled.tuning is not None:
        print(f"  tuning: {compiled.tuning.summary()}")
        for note in compiled.tuning.notes:
            print(f"    {note}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Dense vs pruned latency on each backend, alternating rounds in one process."""
    from prunepass.backends.measure.alternate import Spread, alternate, speedup
    from prunepass.backends.measure.measure import runner
    rpc = _rpc(args)
    if "tvm" in args.backends.split(",") and args.target != "x86" and rpc is None:
        raise PrunepassError(f"bench --target {args.target}: this machine cannot run it; name "
                             "the device with --rpc-tracker and --rpc-key")
    if args.min_speedup and not args.pipeline:
        raise PrunepassError("bench --min-speedup compares the pruned model with the dense "
                             "one: give a pipeline (-p)")
    model, pruned, inputs = _pruned(args)
    variants = [("dense", model)] + ([("pruned", pruned)] if pruned is not None else [])
    say = _say(args)
    source = f"measured here, {args.rounds} alternating rounds x {args.repeats} samples"
    say(f"{'backend':8} {'variant':8} {'median ms':>10} {'IQR ms':>8}   ({source})")
    rows, speedups = [], {}
    for backend in args.backends.split(","):
        if backend == "tvm" and rpc is not None:
            rows += _bench_remote(args, rpc, variants, inputs, say)
            continue
        extra = {"trials": args.trials} if backend == "tvm" else {}
        runners = {v: runner(backend, m, inputs, threads=args.threads, **extra)
                   for v, m in variants}
        rounds = alternate(runners, rounds=args.rounds, repeats=args.repeats, number=1,
                           warmup=2)
        for v, _ in variants:
            st = Spread.of(rounds[v])
            say(f"{backend:8} {v:8} {st.median:>10.2f} {st.iqr:>8.2f}")
            rows.append({"backend": backend, "variant": v, "median_ms": st.median,
                         "iqr_ms": st.iqr, "source": source})
        if pruned is not None:
            up = speedup(rounds["dense"], rounds["pruned"])
            speedups[backend] = up.to_dict()
            say(f"{backend:8} speedup  {up.median:>9.2f}x {up.iqr:>8.2f}")
    if args.json:
        _print_json({"model": args.model, "pipeline": args.pipeline, "rows": rows,
                     "speedup": speedups})
    slow = {b: s["median"] for b, s in speedups.items() if s["median"] < args.min_speedup}
    if slow:
        b, x = min(slow.items(), key=lambda kv: kv[1])
        raise CheckFailed(f"bench: the pruned model is {x:.2f}x as fast as the dense one on "
                          f"{b} (median of per-round ratios), below --min-speedup "
                          f"{args.min_speedup}")
    return 0


def _bench_remote(args: argparse.Namespace, rpc: Any, variants: list, inputs: Any,
                  say: Any) -> list[dict]:  # noqa: ANN401
    """TVM on a device behind a tracker: each variant compiled for --target here and timed
    there, one after the other (a device serves one session at a time)."""
    from prunepass.backends.tvm.measure import measure_tvm
    stats = {v: measure_tvm(m, inputs, repeats=args.rounds * args.repeats, number=1,
                            warmup=2, target=args.target, trials=args.trials, rpc=rpc)
             for v, m in variants}
    rows = []
    for v, st in stats.items():
        say(f"{'tvm@' + rpc.key:8} {v:8} {st.median_ms:>10.2f} {st.iqr_ms:>8.2f}   "
            "(measured on the device, variants one after the other)")
        rows.append({"backend": f"tvm@{rpc.key}", "variant": v, "median_ms": st.median_ms,
                     "iqr_ms": st.iqr_ms, "source": "measured on the device, variants one "
                     "after the other"})
    if "pruned" in stats:
        say(f"{'tvm@' + rpc.key:8} speedup  "
            f"{stats['dense'].median_ms / stats['pruned'].median_ms:>9.2f}x (of medians)")
    return rows


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Time dense and uniformly pruned variants of the models here, fit the profile's latency
    model to them (see prunepass.hardware.calibrate) and write the fitted profile."""
    check_outputs({"-o": (args.output, (".yaml", ".yml"), False)}, args.models)
    import prunepass
    from prunepass.backends.measure.alternate import Spread, alternate
    from prunepass.backends.measure.measure import runner
    from prunepass.hardware import load_profile, save_profile
    from prunepass.hardware.calibrate import CHANNEL_BLOCKS, LATENCY_TERMS, MAC_KINDS, Run, \
        calibrate, measured_run
    from prunepass.passes.analysis.cost import compute_cost
    pipelines = {"dense": "dce"} | {f"ratio {r}": f"prune-channels<ratio={r}>,dce"
                                    for r in args.ratios.split(",")}
    coefficients = len(MAC_KINDS) + len(LATENCY_TERMS)
    runs = len(args.models) * len(pipelines)
    if runs < coefficients and not args.force:
        raise PrunepassError(f"calibrate: {runs} runs ({len(args.models)} models x "
                             f"{len(pipelines)} variants) cannot fit {coefficients} "
                             "coefficients (the error would read 0% and mean nothing); give "
                             "more models or --ratios, or --force")
    aligned: dict[int, list[Run]] = {b: [] for b in CHANNEL_BLOCKS}
    for spec in args.models:
        model, inputs = _load(argparse.Namespace(model=spec, input_shape=args.input_shape))
        results = {v: prunepass.prune(model, inputs, p, progress=False)
                   for v, p in pipelines.items()}
        runners = {v: runner(args.backend, r.model, inputs, threads=args.threads or None)
                   for v, r in results.items()}
        rounds = alternate(runners, rounds=args.rounds, repeats=args.repeats, number=1)
        for v, res in results.items():
            g = res.adapter.graph
            cost = compute_cost(g)
            seconds = Spread.of(rounds[v]).median / 1e3
            for b in CHANNEL_BLOCKS:
                aligned[b].append(measured_run(f"{spec} {v}", g, cost, seconds, b))
    device = f"{args.backend}, {args.threads or 'default'} threads, this machine"
    cal = calibrate(load_profile(args.profile), aligned[1], device, aligned=aligned)
    save_profile(cal.profile, args.output)
    block = cal.profile.extra["latency_model"]["channel_block"]
    say = _say(args)
    say(f"{'variant':40} {'measured ms':>12} {'model ms':>9} {'error':>7}")
    for row in cal.latency:
        say(f"{row.name:40} {row.measured * 1e3:>12.3f} {row.predicted * 1e3:>9.3f} "
            f"{row.rel_error * 100:>+6.1f}%")
    say(f"latency measured on {args.backend}; fitted with channel block {block}, mean abs "
        f"error {cal.mean_abs_pct_error():.1f}% (in-sample); profile written to "
        f"{args.output} (use it with --profile or prune-channels<profile=...>)")
    if len(cal.latency) < 2 * coefficients:
        say(f"note: {len(cal.latency)} runs for {coefficients} coefficients: a small error "
            "here says little about other models; give more models or ratios")
    if args.json:
        _print_json({"profile": args.output, "device": device, "channel_block": block,
                     "runs": [{"name": r.name, "measured_ms": r.measured * 1e3,
                               "predicted_ms": r.predicted * 1e3, "rel_error": r.rel_error}
                              for r in cal.latency],
                     "mean_abs_pct_error": cal.mean_abs_pct_error(),
                     "coefficients": coefficients})
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    from prunepass.hardware import available_profiles, load_profile
    for name in available_profiles():
        p = load_profile(name)
        print(f"  {name:18} {p.description}")
        print(f"  {'':18} MAC fp32 {p.mac_energy('float32')} {p.unit}; levels "
              + ", ".join(f"{m.name} {m.pj_per_byte} {p.unit}/B" for m in p.memory))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from prunepass.demo import main as demo
    return demo(quick=args.quick)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _at_least(lo: int):  # noqa: ANN202
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {value}")
        return value
    return parse


def help_with_default(action: argparse.Action) -> str:
    """An option's help with its default, where it has one worth saying (--help, docs)."""
    text = action.help or ""
    default = action.default
    if default is None or default is False or default in ([], "", argparse.SUPPRESS) \
            or "default" in text:
        return text
    return text + " (default: %(default)s)"


class _ShowDefaults(argparse.HelpFormatter):
    """--help with each option's default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return help_with_default(action)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("prunepass")
    except PackageNotFoundError:  # run from a source tree that is not installed
        from prunepass import __version__
        return __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prunepass", description="A pruning compiler: trace a "
                                "model to a graph IR, run passes, emit a smaller model.",
                                epilog="exit status: 0 done, 2 an error in what was given "
                                "(one line on stderr), 4 a check failed (numerics, "
                                "--min-speedup), 3 an internal error")
    p.add_argument("--debug", action="store_true",
                   help="on an error, show the Python traceback (anywhere on the line)")
    p.add_argument("--version", action="version", version=f"prunepass {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("passes", help="list every pass and named pipeline with its options")
    s.add_argument("--expand", metavar="PIPELINE", help="print PIPELINE as it runs: named "
                   "pipelines expanded, every option (defaults included) spelled out")
    s.set_defaults(fn=cmd_passes)

    def model_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("model", help="torchvision:NAME, package.module:factory, a .pt2 "
                       "torch.export archive or a .onnx file")
        s.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224")

    s = sub.add_parser("run", help="run a pipeline on a model")
    model_args(s)
    from prunepass.api import DEFAULT_PIPELINE
    s.add_argument("-p", "--pipeline", default=DEFAULT_PIPELINE,
                   help="passes to run, e.g. 'fold-bn,prune-channels<ratio=0.3>,dce'")
    s.add_argument("-o", "--output", help="write the pruned model (.pt2, .pt or .onnx; an "
                   "ONNX model: .onnx)")
    s.add_argument("--report", help="write the run record (JSON)")
    s.add_argument("--record", help="re-apply a saved record instead of choosing channels")
    s.add_argument("--check-numerics", action="store_true",
                   help="compare each pruned model with the masked original")
    s.add_argument("--calibration", metavar="FILE", help="inputs for the scores that read "
                   "activations or gradients (wanda, flap, activation, taylor, hessian): a .pt "
                   "(a tensor, a tuple of tensors or a dict of keyword tensors) or a .npz "
                   "(arr_0, arr_1, ... positional, other names keyword); only the batch axis "
                   "may differ from the example inputs")
    s.add_argument("--dump-ir", metavar="DIR", help="write the IR before/after each pass")
    s.add_argument("--print-plan", action="store_true", help="print each applied prune plan: "
                   "per group the channels kept and the passes that decided the count")
    s.add_argument("--sparsity", action="store_true",
                   help="print zeros per weight layer, effective parameters, stored sizes")
    s.add_argument("--top", type=int, default=None, help="with --sparsity: largest N layers")
    s.add_argument("--profile", help="hardware profile (name or YAML) for modelled energy, "
                   "e.g. x86-epyc, arm-cortex-a72, nvidia-h100, horowitz-45nm")
    s.add_argument("--plot", metavar="PNG", help="with --profile: energy per layer chart")
    s.add_argument("--json", action="store_true", help="write the record (and what was "
                   "written where) to stdout as JSON; the table goes to stderr")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("groups", help="show the coupled channel groups and barriers")
    model_args(s)
    _json_arg(s, "the groups and barriers")
    s.set_defaults(fn=cmd_groups)

    s = sub.add_parser("search", help="multi-objective search over per-group ratios "
                       "(Optuna NSGA-II): Pareto set, records, table, plot")
    model_args(s)
    s.add_argument("--evaluate", metavar="MODULE:FN",
                   help="FN(module) -> score, higher is better (needed for accuracy)")
    s.add_argument("--objectives", default="accuracy,macs",
                   help="comma list of accuracy, latency_ms, energy_mj, macs, params "
                   "(default accuracy,macs)")
    s.add_argument("--constraint", action="append", default=[], metavar="NAME=VALUE",
                   help="repeatable: accuracy_drop=1, accuracy=95, latency_ms=4, macs=0.5x, ...")
    s.add_argument("--trials", type=_at_least(1), default=40,
                   help="trials the study holds in the end")
    s.add_argument("--population", type=_at_least(2), default=16,
                   help="NSGA-II population size (at least 2)")
    s.add_argument("--max-ratio", type=float, default=0.8, help="largest ratio per group")
    s.add_argument("--ratio-step", type=float, default=0.05, help="grid of the ratios")
    s.add_argument("--round-to", type=_int_list, default=[1],
                   help="round-to values searched, e.g. 1,8 (default 1)")
    s.add_argument("--importance", default="l2", help="criteria searched, e.g. l2,taylor")
    s.add_argument("--profile", default="x86-epyc",
                   help="hardware profile for latency (model) and energy (modelled)")
    s.add_argument("--finetune", metavar="MODULE:FN",
                   help="FN(module, epochs) trains each pruned model before it is scored")
    s.add_argument("--finetune-epochs", type=int, default=1,
                   help="with --finetune: the epochs each pruned model is trained")
    s.add_argument("--storage", help="Optuna storage URL, e.g. sqlite:///search.db "
                   "(default: in memory); the same URL and --study resume or share a study")
    s.add_argument("--study", default="prunepass-search", help="study name in the storage")
    s.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    s.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    s.add_argument("--out", metavar="DIR", help="write table, CSV, records, summary and plot")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_search)

    s = sub.add_parser("report", help="print a saved run record")
    s.add_argument("record")
    s.add_argument("--top", type=int, default=8, help="how many changed tensors to list")
    s.add_argument("--plot", metavar="PNG", help="energy per layer chart (dense vs pruned)")
    s.add_argument("--json", action="store_true",
                   help="the record as JSON on stdout; the table goes to stderr")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("compile", help="compile a (pruned) model with Apache TVM for x86, "
                       "aarch64 or cuda")
    model_args(s)
    s.add_argument("-p", "--pipeline", default="", help="prune first with this pipeline")
    s.add_argument("--target", default="x86", help="x86, aarch64, cuda or cuda:sm_90")
    s.add_argument("-o", "--output", default="out/tvm", help="output folder")
    s.add_argument("--trials", type=int, default=0, help="MetaSchedule trials (0: untuned)")
    s.add_argument("--tune-minutes", type=_positive_float, metavar="M",
                   help="tune for M minutes of wall-clock time, spent on the kernels with "
                   "the largest share of the model's latency (instead of --trials)")
    s.add_argument("--layout", default="auto", choices=["auto", "nchw", "nhwc", "nchwc"],
                   help="convolutions' data layout (auto: the target's fastest; x86: "
                   "nchwc, channel blocks of the vector width; nhwc with --library onednn)")
    s.add_argument("--library", choices=["auto", "openblas", "onednn"],
                   help="x86: run linear layers, matmuls and (onednn) convolutions through "
                   "this library's kernels, the fastest x86 artifact (built on first use; "
                   "needs a C++ compiler and pip install 'prunepass[onednn]' or "
                   "'prunepass[blas]'; auto: onednn where installed)")
    s.add_argument("--library-ops", metavar="OPS",
                   help="with --library, the operators it takes: of dense, matmul, conv2d "
                   "(default: all three for onednn, whose convolutions fuse the batch norm, "
                   "activation and residual add after them; dense,matmul for openblas, "
                   "whose convolutions go through im2col)")
    s.add_argument("--database", help="tuning database folder (reused across runs; one "
                   "folder inside per CPU model and vector extensions)")
    s.add_argument("--name", default="model", help="library file name")
    _rpc_args(s, "measure tuning candidates (needed to tune for a target this machine "
              "cannot run, e.g. aarch64)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_compile)

    s = sub.add_parser("bench", help="measured latency, dense vs pruned, on torch/ort/tvm")
    model_args(s)
    s.add_argument("-p", "--pipeline", default=DEFAULT_PIPELINE, help="the pruning to compare")
    s.add_argument("--backends", default="torch,ort", help="comma list of torch, ort, tvm")
    s.add_argument("--rounds", type=int, default=5, help="alternating dense/pruned rounds")
    s.add_argument("--repeats", type=int, default=5, help="samples per round")
    s.add_argument("--threads", type=int, default=0,
                   help="intra-op threads for torch and onnxruntime (0: their default)")
    s.add_argument("--trials", type=int, default=0, help="tvm: MetaSchedule trials")
    s.add_argument("--target", default="x86", help="tvm: x86, aarch64, cuda or cuda:sm_90 "
                   "(another than this machine's needs --rpc-tracker)")
    _rpc_args(s, "tvm: time the compiled variants")
    s.add_argument("--min-speedup", type=float, default=0.0, metavar="X",
                   help="exit with status 4 unless the pruned model is at least X times as "
                   "fast as the dense one on every backend (a CI gate)")
    _json_arg(s, "the timings and speedups")
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("calibrate", help="time dense and pruned variants of models here and "
                       "fit a hardware profile's latency model to them")
    s.add_argument("models", nargs="+", help="torchvision:NAME, package.module:factory or a "
                   ".onnx file, each")
    s.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224")
    s.add_argument("--backend", default="ort", choices=("ort", "torch"),
                   help="where the variants are timed")
    s.add_argument("--ratios", default="0.3,0.5", help="uniform pruning ratios timed beside "
                   "the dense model")
    s.add_argument("--profile", default="x86-epyc", help="the profile to start from")
    s.add_argument("--threads", type=int, default=0,
                   help="intra-op threads (0: the backend's default)")
    s.add_argument("--rounds", type=int, default=5, help="alternating rounds over the variants")
    s.add_argument("--repeats", type=int, default=5, help="samples per round")
    s.add_argument("-o", "--output", required=True, help="the fitted profile (.yaml)")
    s.add_argument("--force", action="store_true", help="fit even with fewer runs than "
                   "coefficients")
    _json_arg(s, "the fitted runs and their errors")
    s.set_defaults(fn=cmd_calibrate)

    s = sub.add_parser("profiles", help="list the shipped hardware profiles")
    s.set_defaults(fn=cmd_profiles)

    s = sub.add_parser("demo", help="the end-to-end demo: digits CNN, resnet18, "
                       "mobilenet_v2 latency in onnxruntime")
    s.add_argument("--quick", action="store_true",
                   help="fewer epochs, smaller model, no latency section")
    s.set_defaults(fn=cmd_demo)
    for command in sub.choices.values():  # every option's default shown in its --help
        command.formatter_class = _ShowDefaults
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except PrunepassError as e:
        if debug:
            raise
        msg = " ".join(str(e).split())
        print(f"prunepass: error: {msg}", file=sys.stderr)
        return _json_error(args, type(e).__name__, msg, e.exit_status)
    except KeyboardInterrupt:
        print("prunepass: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `prunepass passes | head`: the reader has all it wanted
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # a bug or an unforeseen input: one line, the traceback on demand
        if debug:
            raise
        msg = " ".join(str(e).split())[:300] or type(e).__name__
        print(f"prunepass: internal error ({type(e).__name__}): {msg}; run with --debug for "
              "the traceback", file=sys.stderr)
        return _json_error(args, type(e).__name__, msg, 3)


def _json_error(args: argparse.Namespace, kind: str, message: str, status: int) -> int:
    """With --json, stdout still carries one JSON document: the error."""
    if getattr(args, "json", False):
        try:
            _print_json({"error": {"type": kind, "message": message, "exit_status": status}})
        except BrokenPipeError:
            pass
    return status


if __name__ == "__main__":
    sys.exit(main())
