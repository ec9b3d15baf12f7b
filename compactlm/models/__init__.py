"""The compact Transformer: layers, model, adapters, quantized layers, generation."""
