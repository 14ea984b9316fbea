"""The Sinkhorn solvers (online log-domain Sinkhorn, the Sinkhorn divergence)."""
__all__: list = []
