"""Models: where a model comes from (``catalogue``), loading it (HF folders, hub ids, GGUF), and small
helpers that speak the Hugging Face module tree and its special tokens."""
