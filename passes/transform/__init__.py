"""Transforms: they change the model through its adapter and say what stays valid."""
