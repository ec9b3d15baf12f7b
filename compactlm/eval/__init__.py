"""Evaluation: perplexity, compression baselines, benchmarks, reports."""
