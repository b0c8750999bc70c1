"""Start training runs: `python -m launch local|slurm|hostfile|status` (see launch/__main__.py)."""
