"""Command-line entry points: thin Hydra apps that call into the package."""
