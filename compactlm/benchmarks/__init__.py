"""Benchmarks: training throughput (bench train), kernels, decoding, and the SASS budget."""
