"""Evaluation: validation loss / perplexity / bits per byte, and the compressor baselines."""
