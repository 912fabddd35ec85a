"""Models: where a model comes from (``catalogue``), loading it from hub ids, folders and GGUF files
(``loading``), helpers that speak the Hugging Face module tree (``tree``), and every special-token
fact: end-of-turn, EOS, pad and stop ids (``tokens``)."""
