"""Sweeps: a YAML file in sweeps/ becomes one Hydra multirun of tcx-train, dispatched by a launcher
(in-process, submitit locally, or submitit on SLURM), with points that share a model pass packed
into one job as a bank."""
