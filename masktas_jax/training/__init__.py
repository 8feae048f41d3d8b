"""Training: the trainer (a stage's Task -> jitted program and loop), the
classifier recipe shared by fine-tuning and ranking, checkpoints' timing,
preemption, TensorBoard and the plots."""
