"""Analysis, plan and transform passes, and the named pipelines. Importing this package
registers every pass."""
from prunepass.passes.analysis import (  # noqa: F401
    channel_groups, channel_latency, cost, energy, importance, sensitivity, shapes, sparsity)
from prunepass.passes.plan import (  # noqa: F401
    hw_check, hw_round, limit_channels, score_channels, select_budget, select_channels,
    select_threshold)
from prunepass.passes.transform import (  # noqa: F401
    apply_record, dce, fold_bn, mask_weights, nm_sparsity, remove_blocks, remove_channels)
from prunepass.passes.pipelines import mask, prune_channels  # noqa: F401
