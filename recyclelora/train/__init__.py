"""Training: the loop, optimiser and schedules, resumable state, and the (torchrun / SLURM) launch."""
