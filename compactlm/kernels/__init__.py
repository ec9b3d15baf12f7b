"""Triton kernels and their pure-JAX references (the specification)."""
