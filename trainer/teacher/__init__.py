"""Training the teacher: the loop every strategy shares, the memory check, the training-curve
plot, and the TeacherTrainer's TFX entry point (``entry.run_fn``)."""
