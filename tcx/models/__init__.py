"""Language models: which model, where its MLP hookpoints are, and running it up to a hook.

Everything that differs between transformer-lens majors (3.9 and 4.x) stays in `bridge.py`.
"""
