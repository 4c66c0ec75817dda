"""Frontends turn native models into the IR and apply transforms back to them."""
