"""Analysis and transform passes. Importing this package registers every pass."""
from prunepass.passes.analysis import (  # noqa: F401
    channel_groups, channel_latency, cost, energy, importance, sensitivity, shapes, sparsity)
from prunepass.passes.transform import (  # noqa: F401
    apply_record, dce, fold_bn, mask, nm_sparsity, prune_channels)
