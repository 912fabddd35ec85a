"""Where vectors come from: hidden states of prompts, vector files and dataset means, SAE decoder
rows, and ``VectorSource``, the one syntax every command takes."""
