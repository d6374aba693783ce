"""Training the teacher: its input stream, the loop every strategy shares, the memory check,
the training-curve plot, and the TFX module file (``module.run_fn``)."""
