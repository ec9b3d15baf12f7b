"""Interoperability: Hugging Face checkpoints in and out. hf_config.py (config.json <-> Config,
one table per family), hf_tensors.py (names and orientation), hf_tokenizer.py, safetensors_io.py,
hf.py (the export and import of whole directories)."""
