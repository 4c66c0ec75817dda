"""Measurement: latency statistics and energy meters."""
