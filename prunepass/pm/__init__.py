from prunepass.pm.analysis_manager import AnalysisManager
from prunepass.pm.instruments import DumpIR, Instrument, TimePasses, VerifyIR
from prunepass.pm.options import Option
from prunepass.pm.pass_manager import PassManager
from prunepass.pm.passes import (AnalysisPass, Pass, PipelinePass, PreservedAnalyses,
                                 TransformPass, TransformResult, expand)
from prunepass.pm.pipeline import format_pipeline, parse_pipeline
from prunepass.pm.registry import REGISTRY, lookup, register

__all__ = [
    "AnalysisManager", "AnalysisPass", "DumpIR", "Instrument", "Option", "Pass", "PassManager",
    "PipelinePass", "expand",
    "PreservedAnalyses", "REGISTRY", "TimePasses", "TransformPass", "TransformResult",
    "VerifyIR", "format_pipeline", "lookup", "parse_pipeline", "register",
]
