"""Measuring dictionaries: sparsity and reconstruction metrics."""
