"""Comparing runs side by side: a table, the sparsity-fidelity frontier, and a page with no server."""
