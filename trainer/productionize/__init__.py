"""From teacher to small verified models: distillation, pruning, quantization-aware training,
TFLite conversion and parity, measurement, evaluation of every variant, plots, and the
Distiller's TFX module file (``module.run_fn``)."""
