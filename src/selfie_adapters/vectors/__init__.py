"""Where vectors come from: prompts (``prompts``), hidden states and means (``hidden``, and ``chunked``
for resumable `extract`/`mean` files), vector and mean files (``tensor_files``), SAE decoder rows
(``sae``), ``VectorSource`` (``source``: the one syntax every command takes) and the one place zero
rows are dropped (``rows``)."""
