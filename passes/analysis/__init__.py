"""Analyses: they read the IR and return results the AnalysisManager caches."""
