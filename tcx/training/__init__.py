"""Training: a Lightning module that trains a bank of dictionaries from one activation stream."""
