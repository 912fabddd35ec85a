"""Training SelfIE adapters: config, data, loss, trainer (and DDP helpers)."""
