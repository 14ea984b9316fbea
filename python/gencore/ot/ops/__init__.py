"""ot torch ops, one module per op group (each registers its ops on import)."""
