"""Feature circuits through transcoders."""
