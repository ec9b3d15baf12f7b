"""compactlm: a JAX research framework for small language models."""
