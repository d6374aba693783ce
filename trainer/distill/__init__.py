"""The Distiller's work: a small student from the teacher (knowledge distillation, pruning,
quantization-aware training, a scratch baseline), written as ``contract.files.DistillerOutput``;
its TFX entry point is ``entry.run_fn``."""
