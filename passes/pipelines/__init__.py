"""Named pipelines: one name and its options expanding to small passes."""
