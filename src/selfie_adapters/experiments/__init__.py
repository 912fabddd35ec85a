"""Experiments that run the whole pipeline on a model: vectors → adapters → descriptions → scores."""
