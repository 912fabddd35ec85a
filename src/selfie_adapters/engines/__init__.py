"""Ways to run `selfie describe` beyond one process: ``ray_shards`` (many GPUs and nodes, with Ray)."""
