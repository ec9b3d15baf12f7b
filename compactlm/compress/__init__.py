"""Post-training compression: quantization and pruning."""
