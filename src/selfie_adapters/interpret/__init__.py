"""The interpreter: the SelfIE prompt (``template``), soft tokens into a forward pass (``inject``), the
batched KV-cache generation engine (``generate``), where a label ends (``label_text``), the describe
API (``describe``: ``Interpreter``) and describing into an owned JSONL output, resumably
(``resumable``: ``describe_source``, ``write_descriptions``)."""
