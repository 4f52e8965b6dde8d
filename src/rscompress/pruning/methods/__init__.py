"""Pruning methods built on the shared pieces (one module per method)."""
