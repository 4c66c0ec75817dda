"""Analysis and transform passes. Importing this package registers every pass."""
from prunepass.passes.analysis import channel_groups, cost, importance, shapes  # noqa: F401
from prunepass.passes.transform import apply_record, dce, fold_bn, prune_channels  # noqa: F401
