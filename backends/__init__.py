"""Backends: where pruned models are compiled and measured (installed as prunepass.backends)."""
