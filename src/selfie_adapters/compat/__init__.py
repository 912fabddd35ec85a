"""The reference implementation's API (its classes, at ``selfie_adapters.inference`` / ``.projection`` /
``.sae_utils``) and ``convert``: its files into this project's formats."""
