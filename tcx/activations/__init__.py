"""Activations of the hooked layer, streamed in shuffled batches."""
