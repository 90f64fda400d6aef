"""What a run keeps on disk: checkpoint.py (orbax, strict restore), workdir.py (atomic files, lock, run config),
logs.py (metrics.jsonl, TensorBoard scalars, progress bar, the host side of a training loop)."""
