"""Interoperability with other ecosystems: Hugging Face Llama checkpoints in and out (hf.py)."""
