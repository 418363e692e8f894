"""Training a run: the configuration (config), the loop on Accelerate for one CPU, many GPUs or
DeepSpeed ZeRO (loop), the start-or-resume decision (session), the run's log (run_log), checkpoints
(checkpoint), the world and its checks (distributed), the optimiser and its schedule (optimiser), the
linear probe that starts LP-FT (linear_probe), hyperparameter search (search), and the run directory
that every later command reads (run_dir, run_data)."""
