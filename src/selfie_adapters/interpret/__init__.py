"""The interpreter: the SelfIE prompt (``template``), soft tokens into a forward pass (``inject``),
batched generation from a shared KV cache, and the describe API (``describe``: ``Interpreter``)."""
