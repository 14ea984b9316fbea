"""Exact optimal transport (network simplex) and sliced Wasserstein."""
__all__: list = []
