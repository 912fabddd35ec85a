"""Adapters: the kinds of projection and their one registry (``kinds``), the published single-file
format (``artifact``: ``Adapter``, ``load_adapter``), the model guard (``guard``) and parameter
statistics (``stats``)."""
