"""hw-check: the plan hw-round snapped against the plan as asked, both built as whole
models and timed on the backend hw-round measured its layers on; the faster is kept.

Layer blocks are timed with their neighbours at the model's dense widths and without the
nodes between layers (normalisations, concatenations, pooling), so a plan whose every
group sits on its latency staircase can still run slower as a model: densenet121 pruned by
0.5 ran 2.75x faster than dense in onnxruntime with snapped counts, against 2.88x with
the counts as asked (measured in one run of benchmarks/speed.py)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from prunepass.backends.measure.alternate import Spread, alternate, speedup
from prunepass.errors import PipelineError
from prunepass.plan import PlanPass
from prunepass.pm import register

Keep = dict[tuple[str, int], np.ndarray]


def time_plans(model: Any, keeps: dict[str, Keep], backend: str, threads: int,  # noqa: ANN401
               trials: int, rounds: int = 5) -> dict[str, list[float]]:
    """Milliseconds per round for each plan: ``model`` (an adapter) with the plan's
    channels removed and dead nodes erased, on ``backend`` ("ort", "torch", or "tvm":
    compiled for this CPU, each kernel tuned with ``trials`` into the layer database), the
    plans timed in alternating rounds."""
    from prunepass.backends.measure.layer_latency import set_tvm_threads, tvm_database
    from prunepass.backends.measure.measure import runner
    if backend == "tvm":
        set_tvm_threads(threads)
    runners = {}
    with tempfile.TemporaryDirectory(prefix="prunepass-hw-check-") as tmp:
        for name, keep in keeps.items():
            planned = model.planned(keep)
            native, inputs = planned.materialize(), tuple(planned.example_inputs)
            if backend == "tvm":
                runners[name] = runner("tvm", native, inputs, out_dir=Path(tmp) / name,
                                       max_trials_per_task=trials or None, progress=False,
                                       database=tvm_database() if trials else None)
            else:
                runners[name] = runner(backend, native, inputs, threads=threads or None)
        return alternate(runners, rounds=rounds, repeats=5, number=3, warmup=3)


def compare(model: Any, snapped: Keep, asked: Keep, backend: str, threads: int,  # noqa: ANN401
            trials: int) -> dict[str, Any]:
    """Time both plans; ``kept`` names the one to use: the snapped plan unless the plan as
    asked ran faster (median over rounds of the per-round ratio)."""
    if backend == "torch" and model.frontend != "torch":
        return {"kept": "snapped", "skipped": f"torch cannot run a model of the {model.frontend} frontend"}
    rounds = time_plans(model, {"snapped": snapped, "asked": asked}, backend, threads, trials)
    gain = speedup(rounds["asked"], rounds["snapped"])  # > 1: the snapped plan is faster
    where = f"{backend}, {threads or 'default'} threads" + (
        f", {trials} trials per kernel" if backend == "tvm" else "")
    return {"kept": "snapped" if gain.median >= 1.0 else "asked",
            "source": f"measured here ({where}), alternating rounds",
            "snapped_ms": Spread.of(rounds["snapped"]).to_dict(),
            "asked_ms": Spread.of(rounds["asked"]).to_dict(),
            "snapped_speedup": gain.to_dict()}


@register
class HwCheck(PlanPass):
    """Time the plan hw-round snapped against the plan as selected; keep the faster."""
    name = "hw-check"

    def update(self, am: Any) -> dict[str, Any]:  # noqa: ANN401
        plan = self.open_plan(am, selected=True)
        hw = plan.cache.get("hw-round")
        if hw is None:
            raise PipelineError(f"{self.name} compares the plan hw-round snapped with the "
                                "plan as selected: put hw-round before it")
        if "budget" in plan.notes:
            raise PipelineError(f"{self.name}: the plan was selected by a budget "
                                f"({plan.selected_by}), which the snapped plan is searched "
                                "to meet; hw-check compares plans selected by a ratio")
        asked = plan.without("hw-round")
        if (asked == plan.removed).all():
            return {}
        check = compare(am.model, plan.cg.keep_for(plan.removed), plan.cg.keep_for(asked),
                        hw["backend"], hw["threads"], hw["trials"])
        plan.notes["hw_check"] = check
        if check["kept"] == "asked":
            plan.drop_refinement("hw-round")
        return {"hw_check": check}
