"""What a run leaves on disk: every workdir path, the model directories
(teacher, student, classifier) and Orbax checkpoints."""
