"""Experiments: the ablation runner (sweep), its reports, the model picker, the recipe."""
