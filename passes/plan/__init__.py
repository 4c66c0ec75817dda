"""Plan passes: they build and refine the prune plan (prunepass.plan)."""
