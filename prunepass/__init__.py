"""prunepass: a pruning compiler. Trace a model to a graph IR, run analysis and transform
passes over it, and get a smaller model back."""
from prunepass.errors import PipelineError, PlanError, PrunepassError, TraceError, VerificationError
from prunepass.pm import AnalysisManager, PassManager, parse_pipeline
from prunepass import passes as _passes  # noqa: F401  (registers every pass)
from prunepass.record import Record
from prunepass.api import DEFAULT_PIPELINE, PruneResult, apply_record, load, prune
from prunepass import search  # a callable package: prunepass.search(...) runs search.search

__version__ = "0.1.0"
__all__ = [
    "AnalysisManager", "DEFAULT_PIPELINE", "PassManager", "PipelineError", "PlanError",
    "PruneResult", "PrunepassError", "Record", "TraceError", "VerificationError",
    "apply_record", "load", "parse_pipeline", "prune", "search",
]
